"""Trained-weight behaviour for the tiny TTS checkpoints, in tests only.

Random weights never sample end-of-speech, so every sentence runs to the frame cap and the natural end
of a sentence is never exercised. `stop_after` makes a loaded `Qwen3TTSModel` end each utterance
naturally after N frames, as trained weights do: a logits processor on the talker's HF `generate`
keeps `codec_eos_token_id` at -inf before step N and forces it at step N. Given the engine's step loop
(the CPU's lean loop, or the CUDA graphs), the same end is rigged there: after frame N the next codebook 0
the loop reads is end-of-speech. The product code is not touched; everything else about the official
call (codes, sampling, decode) stays as it is.
"""

from __future__ import annotations

import time
from typing import Callable, List

import torch
from transformers import LogitsProcessor, LogitsProcessorList


class EndOfSpeechAfter(LogitsProcessor):
    """End the utterance after `frames` frames: end-of-speech is impossible before, certain then."""

    def __init__(self, frames: int, eos: int) -> None:
        self.frames, self.eos, self.step = frames, eos, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        if self.step < self.frames:
            scores[:, self.eos] = -float("inf")
        else:
            scores[:, :] = -float("inf")
            scores[:, self.eos] = 0.0
        self.step += 1
        return scores


def stop_after(tts, frames: Callable[[], int] | int, step_loop=None) -> None:
    """Make every later `generate_*` call of `tts` end naturally after `frames` frames (an int, or a
    callable read at each call, so a test can vary it per sentence), through the official `generate` and
    through `step_loop` (a StepLoop) if given."""
    talker = tts.model.talker
    eos = tts.model.config.talker_config.codec_eos_token_id
    original = talker.generate

    def generate(*args, **kwargs):
        n = frames() if callable(frames) else frames
        kwargs["logits_processor"] = LogitsProcessorList([EndOfSpeechAfter(n, eos)])
        return original(*args, **kwargs)

    talker.generate = generate
    if step_loop is not None:
        _end_step_loop_after(step_loop, frames, eos)


def _end_step_loop_after(step_loop, frames: Callable[[], int] | int, eos: int) -> None:
    """After frame N of each sentence the loop reads end-of-speech as the next codebook 0 (steps.out[-1])."""
    original = step_loop._steps_for

    def steps_for(*args, **kwargs):
        steps, frame = original(*args, **kwargs)
        n = frames() if callable(frames) else frames
        done = 0

        def ending_frame() -> None:
            nonlocal done
            frame()
            done += 1
            if done >= n:
                with torch.inference_mode():
                    steps.out[-1] = eos

        return steps, ending_frame

    step_loop._steps_for = steps_for


class DecodeCounter:
    """Counts (and times) calls of a `speech_tokenizer.decode`, wrapping the instance's method."""

    def __init__(self, speech_tokenizer) -> None:
        self.calls: List[float] = []  # monotonic start time of each call
        original = speech_tokenizer.decode

        def decode(*args, **kwargs):
            self.calls.append(time.monotonic())
            return original(*args, **kwargs)

        speech_tokenizer.decode = decode

    def __len__(self) -> int:
        return len(self.calls)
