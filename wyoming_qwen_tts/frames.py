"""Codec frames as the official `generate` makes them, handed out one by one as they exist.

Each step of the talker's HF `generate` samples codebook 0 of the next frame, and the code predictor
fills in the other 15 codebooks inside the *following* forward, whose output carries that frame's 16
codes (`output.hidden_states[1]`). A forward hook on the talker therefore sees every frame the moment
it exists, inside the unmodified official call, so the codes are the official ones by construction
(greedy or sampled, any voice kind) and any upstream change is followed automatically. This is simpler
than a hand-written step loop, which would have to copy generate's logits processors in their order.

The hook also ends generation early by raising: on the EOS frame (which the official code cuts
anyway), at the frame limit (so the wrapper does not decode the whole utterance again at the end),
or when the caller asks to stop (between any two frames).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch


class GenerationStopped(Exception):
    """The caller asked generation to stop (e.g. the client disconnected)."""


class _Done(Exception):
    """Internal: every frame is out; skip the rest of the wrapper (its full decode)."""


def generate_frames(
    tts,
    run_official: Callable[[], object],
    on_frame: Callable[[torch.Tensor], None],
    max_frames: int,
    should_stop: Optional[Callable[[], bool]] = None,
) -> int:
    """Run `run_official()` (a `Qwen3TTSModel.generate_*` call with `max_new_tokens=max_frames + 1`)
    and pass each frame's 16 codes to `on_frame` as soon as they exist. Returns the number of frames."""
    eos = tts.model.config.talker_config.codec_eos_token_id
    count = 0

    def hook(_module, _inputs, output):
        nonlocal count
        codes = output.hidden_states[1]
        if codes is None:  # the prefill forward carries no frame
            return
        if int(codes[0, 0]) == eos:
            raise _Done
        if should_stop is not None and should_stop():
            raise GenerationStopped
        on_frame(codes[0].detach())
        count += 1
        if count >= max_frames:
            raise _Done

    handle = tts.model.talker.register_forward_hook(hook)
    try:
        run_official()
    except _Done:
        pass
    finally:
        handle.remove()
    return count
