"""One utterance being transcribed while it is spoken.

A step task runs a decode step whenever `chunk_seconds` of new audio has arrived, always over all audio
so far; a step that is slower than real time simply finds more audio next time, so no backlog builds.
Newly committed text goes to `on_text` at once. `finish()` aborts a running step and runs the one
final step over all audio.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, List, Optional

import numpy as np

from shared.inference import Priority
from shared.model_manager import ModelHandle

from .model_io import SAMPLE_RATE, max_new_tokens_for
from .streaming import CommittedPrefix, committed_text, final_text

if TYPE_CHECKING:
    from .engine import AsrEngine

_LOGGER = logging.getLogger(__name__)

# Streaming steps re-decode all audio so far, so they stop past this length; the rest of a longer
# utterance is decoded once at audio-stop (split as the official transcribe does past 20 minutes).
STREAM_WINDOW_SECONDS = 30.0


@dataclass
class Result:
    language: Optional[str]  # Qwen's name, e.g. "English"; None when not detected
    text: str


class StreamingSession:
    def __init__(
        self,
        handle: ModelHandle,
        *,
        context: str,
        language: Optional[str],
        chunk_seconds: float,
        on_text: Callable[[Optional[str], str], Awaitable[None]],
        stream_window_seconds: Optional[float] = None,
    ) -> None:
        self._handle = handle
        self._context = context
        self._language = language
        self._chunk_samples = max(1, int(chunk_seconds * SAMPLE_RATE))
        window = STREAM_WINDOW_SECONDS if stream_window_seconds is None else stream_window_seconds
        self._window_samples = int(window * SAMPLE_RATE)
        self._on_text = on_text
        self._pcm = bytearray()
        self._committed = CommittedPrefix()
        self._sent = ""
        self._decoded_samples = 0
        self._new_audio = asyncio.Event()
        self._closed = False
        self._abort = False  # read by the inference thread between two tokens
        self._prompt: Optional[str] = None
        self._last_output: Optional[tuple] = None  # (samples, full raw output) of the last step
        self._inflight_samples = -1
        self._step_task = asyncio.create_task(self._step_loop(), name="asr steps")
        self.steps = 0

    @property
    def samples(self) -> int:
        return len(self._pcm) // 2

    def add_audio(self, pcm16: bytes) -> None:
        """16 kHz mono signed 16-bit audio."""
        self._pcm.extend(pcm16)
        self._new_audio.set()

    async def finish(self) -> Result:
        """Decode the whole utterance once more and return the final transcript."""
        self._closed = True
        # A step already decoding all the audio is the final step; an older one is cut short (what
        # it generated so far still counts) so that at most one full step runs after audio-stop.
        self._abort = self._inflight_samples != self.samples
        self._new_audio.set()
        await self._step_task  # re-raises a failed step
        self._abort = False
        samples = self.samples
        if samples == 0:
            return Result(self._language, "")
        started = time.monotonic()
        audio = self._audio(samples)
        if samples > self._window_samples:
            from .engine import split_long_audio

            parts = split_long_audio(audio)
        else:
            parts = [audio]
        if self._last_output is not None and self._last_output[0] == samples:
            raw = self._last_output[1]  # no audio since the last step: its whole output is final
        else:
            raw = await self._decode(parts[0], prefix=self._committed.ids)
        texts = [raw]
        for part in parts[1:]:
            texts.append(await self._decode(part, prefix=[]))
        # as the official transcribe: each part parsed (repetition fix included), the texts joined
        parsed = [final_text(raw_part, self._language) for raw_part in texts]
        text = "".join(part_text for _language, part_text in parsed)
        language = next((part_language for part_language, _text in parsed if part_language), None)
        _LOGGER.debug(
            "Final step over %.2f s of audio in %.3f s (%d streaming steps)",
            samples / SAMPLE_RATE,
            time.monotonic() - started,
            self.steps,
        )
        return Result(language or self._language, text)

    async def cancel(self) -> None:
        self._closed = True
        self._abort = True
        self._new_audio.set()
        self._step_task.cancel()
        try:
            await self._step_task
        except (asyncio.CancelledError, Exception):
            pass

    @property
    def sent_text(self) -> str:
        return self._sent

    # -- steps ----------------------------------------------------------------------------------

    async def _step_loop(self) -> None:
        while True:
            await self._new_audio.wait()
            self._new_audio.clear()
            if self._closed:
                return
            samples = self.samples
            if samples > self._window_samples or samples - self._decoded_samples < self._chunk_samples:
                continue
            started = time.monotonic()
            self._inflight_samples = samples
            try:
                raw = await self._step(self._audio(samples))
            finally:
                self._inflight_samples = -1
            if raw is None:
                return  # audio-stop arrived mid-step; the final step replaces this one
            self._decoded_samples = samples
            self.steps += 1
            _LOGGER.debug(
                "Step %d over %.2f s of audio in %.3f s, %d tokens committed",
                self.steps,
                samples / SAMPLE_RATE,
                time.monotonic() - started,
                len(self._committed.ids),
            )
            language, text = committed_text(raw, self._language)
            if len(text) > len(self._sent) and text.startswith(self._sent):
                piece, self._sent = text[len(self._sent) :], text
                await self._on_text(language, piece)

    def _audio(self, samples: int) -> np.ndarray:
        pcm = np.frombuffer(bytes(self._pcm[: samples * 2]), dtype=np.int16)
        return pcm.astype(np.float32) / 32768.0

    def _run_decode(self, engine: "AsrEngine", audio: np.ndarray, prefix: List[int]) -> List[int]:
        if self._prompt is None:
            self._prompt = engine.prompt(self._context, self._language)
        cap = max(max_new_tokens_for(len(audio) / SAMPLE_RATE) - len(prefix), 8)
        return engine.decode(audio, self._prompt, prefix, max_new_tokens=cap, should_stop=lambda: self._abort)

    async def _step(self, audio: np.ndarray) -> Optional[str]:
        """One streaming step; returns the committed raw text, or None when it was aborted."""

        def job(engine: "AsrEngine") -> Optional[str]:
            generated = self._run_decode(engine, audio, self._committed.ids)
            if self._abort:
                # cut short by audio-stop: its tokens are as good as any step's, minus the rollback
                self._committed.after_step(generated)
                return None
            self._last_output = (len(audio), engine.text(self._committed.ids + generated))
            self._committed.after_step(generated)
            return engine.text(self._committed.ids)

        return await self._handle.run(job, Priority.REALTIME)

    async def _decode(self, audio: np.ndarray, prefix: List[int]) -> str:
        """Raw output (prefix included) of one decode over `audio`."""

        def job(engine: "AsrEngine") -> str:
            return engine.text(list(prefix) + self._run_decode(engine, audio, list(prefix)))

        return await self._handle.run(job, Priority.REALTIME)
