"""Codec frames as the official `generate` makes them, handed out one by one as they exist.

Each step of the talker's HF `generate` samples codebook 0 of the next frame, and the code predictor
fills in the other 15 codebooks inside the *following* forward, whose output carries that frame's 16
codes (`output.hidden_states[1]`). A forward hook on the talker therefore sees every frame the moment
it exists, inside the unmodified official call, so the codes are the official ones by construction
(greedy or sampled, any voice kind) and any upstream change is followed automatically. That is the
path where no step loop is given. On CUDA (graphs) and on a CPU (the lean decoder) our own loop stands in
for `talker.generate` (step_loop.py): it copies generate's logits processors, tested against them, so
that its fixed-shape steps can be captured, or run without Hugging Face's per-call costs.

The wrapper's full decode of the utterance (`speech_tokenizer.decode`, whose audio we would throw
away) never runs:
- natural end: HF's loop appends the sampled end-of-speech token and stops without another forward,
  so the hook never sees it; `generate` returns the codes and the wrapper goes on to decode them. For
  the duration of the call that instance's `speech_tokenizer.decode` is replaced by one that ends the
  call at once (every frame has been handed out by then), so the inference thread is free at once;
- frame limit, or the caller asks to stop (between any two frames): the hook ends generation by
  raising. (It also ends on a frame whose codebook 0 is end-of-speech, which the official code cuts;
  batch-1 HF generation does not produce one, so that is only a guard.)
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch

from shared.inference import heartbeat


class GenerationStopped(Exception):
    """The caller asked generation to stop (e.g. the client disconnected)."""


class _Done(Exception):
    """Internal: every frame is out; skip the rest of the wrapper (its full decode)."""


def _skip_decode(*_args, **_kwargs):
    raise _Done


def generate_frames(
    tts,
    run_official: Callable[[], object],
    on_frame: Callable[[torch.Tensor], None],
    max_frames: int,
    should_stop: Optional[Callable[[], bool]] = None,
    step_loop=None,
) -> int:
    """Run `run_official()` (a `Qwen3TTSModel.generate_*` call with `max_new_tokens=max_frames + 1`)
    and pass each frame's 16 codes to `on_frame` as soon as they exist. Returns the number of frames.
    The wrapper's final full decode is skipped, whether generation ends naturally or is cut short.
    step_loop: a `step_loop.StepLoop` that stands in for `talker.generate` (same codes); None: the
    official `generate`, watched by a forward hook."""
    eos = tts.model.config.talker_config.codec_eos_token_id
    count = 0

    def take(codes: torch.Tensor) -> None:
        nonlocal count
        if int(codes[0]) == eos:  # guard only: see the module docstring
            raise _Done
        heartbeat()
        if should_stop is not None and should_stop():
            raise GenerationStopped
        on_frame(codes)
        count += 1
        if count >= max_frames:
            raise _Done

    def hook(_module, _inputs, output):
        codes = output.hidden_states[1]
        if codes is not None:  # the prefill forward carries no frame
            take(codes[0].detach())

    def stepped_generate(**talker_kwargs):
        for codes in step_loop.frames(**talker_kwargs):
            take(codes)
        raise _Done

    talker = tts.model.talker
    speech_tokenizer = tts.model.speech_tokenizer
    # instance attributes to put back, if any (the method of the class otherwise)
    own_decode = speech_tokenizer.__dict__.get("decode")
    own_generate = talker.__dict__.get("generate")
    if step_loop is None:
        handle = talker.register_forward_hook(hook)
    else:
        talker.generate = stepped_generate
    speech_tokenizer.decode = _skip_decode
    try:
        run_official()
    except _Done:
        pass
    finally:
        if step_loop is None:
            handle.remove()
        elif own_generate is None:
            del talker.generate
        else:
            talker.generate = own_generate
        if own_decode is None:
            del speech_tokenizer.decode
        else:
            speech_tokenizer.decode = own_decode
    return count


@contextlib.contextmanager
def watched_frames(tts, should_stop: Optional[Callable[[], bool]] = None) -> Iterator[None]:
    """While inside, each new frame of `tts` beats the inference thread's heartbeat and, once
    `should_stop()` says so, ends generation by raising GenerationStopped. Nothing else changes: an
    official call that is not stopped returns exactly what it returns without this."""

    def hook(_module, _inputs, output):
        if output.hidden_states[1] is None:  # the prefill forward carries no frame
            return
        heartbeat()
        if should_stop is not None and should_stop():
            raise GenerationStopped

    handle = tts.model.talker.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
