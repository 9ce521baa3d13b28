"""Exact incremental decoding of 12 Hz codec frames to audio.

The 12 Hz decoder of qwen-tts 0.1.1 is strictly causal: its first N frames decode to exactly the first
N x 1920 samples of a full decode. So audio can go out frame by frame without the approximate
"re-decode a window and crossfade" of community forks:
- quantizer and first convolution (kernel 3): re-run over the new frames plus 2 frames before them;
- the transformer (sliding window 72): kept with its KV cache, each frame passes through it once;
- the convolution and upsampling stack: re-run over the new frames plus `context_frames` frames of
  cached transformer output. Its receptive field is about 10 frames, so 16 reproduce a full decode
  to float precision (8 do not; the tests check both).
For cloned voices it is primed with the reference codes once, whose audio is dropped, as the official
path decodes reference + new codes and cuts the reference part.

What this produces is the decoder's own output over the whole utterance (one `decoder(codes)` call
over all of it, reference included). That is exactly the official audio while the decoded codes are
at most 300 frames (24 s; for a cloned voice reference + speech, so about 14 s of speech after a 10 s
reference): the official `speech_tokenizer.decode` is `chunked_decode`, which decodes in 300-frame
chunks with only 25 frames of left context, so past frame 300 its audio differs slightly from a full
decode (a max sample difference of about 0.015 with the tiny random test checkpoints). We keep the
true full decode: it has no seams at chunk borders and needs no look-ahead.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.cache_utils import DynamicCache

CONTEXT_FRAMES = 16


class IncrementalDecoder:
    def __init__(self, decoder, context_frames: int = CONTEXT_FRAMES) -> None:
        self.decoder = decoder  # Qwen3TTSTokenizerV2Decoder
        self.context_frames = context_frames
        self.samples_per_frame = int(decoder.total_upsample)
        self._codes = None  # last 2 frames of codes, [1, 16, <=2]
        self._hidden = None  # transformer output kept for the conv stack, [1, C, <=context]
        self._cache = DynamicCache(config=decoder.pre_transformer.config)
        self._position = 0

    @torch.inference_mode()
    def prime(self, codes: torch.Tensor) -> None:
        """Feed frames (T x 16) whose audio is not wanted (a cloned voice's reference)."""
        if len(codes):
            self._run(codes, want_audio=False)

    @torch.inference_mode()
    def push(self, codes: torch.Tensor, pad_to: int = 0) -> np.ndarray:
        """Audio (float32, clamped to [-1, 1] as the official decode does) of new frames (n x 16).

        pad_to: for the last push of an utterance, decode as many frames as that, repeating the last one, and
        return only the audio of the real ones (the decoder is causal: frames after them change nothing before
        them). Every push then has one of a few shapes, each of which costs a GPU a one-time plan of ~0.1 s
        for the convolutions (measured on an H200); the decoder cannot be pushed again after a padded push."""
        n = len(codes)
        if 0 < n < pad_to:
            codes = torch.cat([codes, codes[-1:].expand(pad_to - n, -1)])
            return self._run(codes, want_audio=True)[: n * self.samples_per_frame]
        return self._run(codes, want_audio=True)

    def _run(self, codes: torch.Tensor, want_audio: bool):
        decoder = self.decoder
        device = next(decoder.parameters()).device
        new = codes.to(device).long().clamp(min=0).transpose(0, 1).unsqueeze(0)  # [1, 16, n]
        n = new.shape[-1]
        before = self._codes if self._codes is not None else new[..., :0]
        window = torch.cat([before, new], dim=-1)
        self._codes = window[..., -2:]
        hidden = decoder.pre_conv(decoder.quantizer.decode(window))[..., before.shape[-1] :].transpose(1, 2)
        hidden = decoder.pre_transformer(
            inputs_embeds=hidden,
            past_key_values=self._cache,
            use_cache=True,
            cache_position=torch.arange(self._position, self._position + n, device=device),
        ).last_hidden_state.permute(0, 2, 1)
        self._position += n
        context = self._hidden if self._hidden is not None else hidden[..., :0]
        self._hidden = torch.cat([context, hidden], dim=-1)[..., -self.context_frames :]
        if not want_audio:
            return None
        x = torch.cat([context, hidden], dim=-1)
        for blocks in decoder.upsample:
            for block in blocks:
                x = block(x)
        for block in decoder.decoder:
            x = block(x)
        audio = x[0, 0, context.shape[-1] * self.samples_per_frame :].clamp(min=-1, max=1)
        return audio.float().cpu().numpy()
