"""Exact incremental decoding of 12 Hz codec frames to audio.

The 12 Hz decoder of qwen-tts 0.1.1 is strictly causal: its first N frames decode to exactly the first
N x 1920 samples of a full decode. So audio can go out frame by frame without the approximate
"re-decode a window and crossfade" of community forks:
- quantizer and first convolution (kernel 3): re-run over the new frames plus 2 frames before them;
- the transformer (sliding window 72): kept with its KV cache, each frame passes through it once;
- the convolution and upsampling stack (`ConvStackStream`): each frame passes through it once. Every
  convolution in it is causal with stride 1, so it keeps the last (kernel - 1) x dilation samples of
  its input as state; every transposed convolution keeps its last input frame, whose output overlaps
  the next one's. The first push starts the stack over `context_frames` frames of cached transformer
  output before the new frames (the stack's receptive field is about 10 frames, so 16 reproduce a full
  decode to float precision; 8 do not; the tests check both), which is what lets a primed decoder skip
  the stack for frames whose audio is dropped.
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

import math

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
        self._hidden = None  # transformer output kept for the conv stack's first push, [1, C, <=context]
        self._stack: "ConvStackStream | None" = None  # from the first push that wants audio
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
        if self._stack is None:
            context = self._hidden if self._hidden is not None else hidden[..., :0]
            self._hidden = torch.cat([context, hidden], dim=-1)[..., -self.context_frames :]
            if not want_audio:
                return None
            self._stack, self._hidden = ConvStackStream(decoder), None
            x = self._stack(torch.cat([context, hidden], dim=-1))[..., context.shape[-1] * self.samples_per_frame :]
        else:
            x = self._stack(hidden)
            if not want_audio:
                return None
        return x[0, 0].clamp(min=-1, max=1).float().cpu().numpy()


class ConvStackStream:
    """The decoder's convolution and upsampling stack (after its transformer) over a stream of frames, each
    frame computed once: the same modules, weights and order as `Qwen3TTSTokenizerV2Decoder.forward`, with
    each convolution's left context kept between calls instead of recomputed."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder
        self._state: dict = {}  # module -> its input's last samples (convolution) or frames (transposed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for upsample, convnext in self.decoder.upsample:
            x = self._convnext(convnext, self._transposed(upsample, x))
        decoder = self.decoder.decoder
        x = self._conv(decoder[0], x)
        for block in decoder[1:-2]:
            snake, upsample, *units = block.block
            x = self._transposed(upsample, snake(x))
            for unit in units:
                residual = x
                x = self._conv(unit.conv2, unit.act2(self._conv(unit.conv1, unit.act1(x))))
                x = x + residual
        return self._conv(decoder[-1], decoder[-2](x))

    def _conv(self, module, x: torch.Tensor) -> torch.Tensor:
        """A causal convolution (Qwen3TTSTokenizerV2CausalConvNet, stride 1): the official left zero padding
        for the first call, the last samples of the previous input after it."""
        assert module.stride == 1, "streaming needs stride-1 convolutions"
        left = self._state.get(module)
        if left is None:
            left = x.new_zeros(*x.shape[:-1], module.padding)
        x = torch.cat([left, x], dim=-1)
        self._state[module] = x[..., x.shape[-1] - module.padding :]
        return module.conv(x)

    def _transposed(self, module, x: torch.Tensor) -> torch.Tensor:
        """A transposed convolution (Qwen3TTSTokenizerV2CausalTransConvNet, cut on the right): the frames whose
        outputs overlap this call's (zeros before the first) are run again, and their own samples dropped."""
        conv = module.conv
        stride, kernel = conv.stride[0], conv.kernel_size[0]
        overlap = math.ceil(kernel / stride) - 1
        before = self._state.get(module)
        if before is None:
            before = x.new_zeros(*x.shape[:-1], overlap)
        x = torch.cat([before, x], dim=-1)
        self._state[module] = x[..., x.shape[-1] - overlap :]
        new = x.shape[-1] - overlap
        return conv(x)[..., overlap * stride : (overlap + new) * stride]

    def _convnext(self, block, x: torch.Tensor) -> torch.Tensor:
        """Qwen3TTSTokenizerV2ConvNeXtBlock.forward with its depthwise convolution streamed."""
        hidden = self._conv(block.dwconv, x).permute(0, 2, 1)
        hidden = block.pwconv2(block.act(block.pwconv1(block.norm(hidden))))
        return x + (block.gamma * hidden).permute(0, 2, 1)
