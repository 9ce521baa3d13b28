"""One utterance being transcribed while it is spoken.

A step task runs a decode step whenever `chunk_seconds` of new audio has arrived, always over all audio
so far; a step that is slower than real time simply finds more audio next time, so no backlog builds.
Newly committed text goes to `on_text` at once. `finish()` aborts a running step and runs the one
final step over all audio.

Audio that arrives faster than it is spoken (a recorded file, a satellite's buffered burst) starts no
step: its `audio-stop` is moments away, a step over part of it would be thrown away, and the part of a
step that cannot be cut short (mel features, encoder, prefill) would only delay the final transcript.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, List, Optional, Sequence

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
# Audio that runs more than BURST_LEAD seconds ahead of the clock within BURST_WINDOW seconds is a burst
# (real-time chunks of up to about BURST_LEAD seconds are not); steps wait until it has passed
BURST_WINDOW = 0.5
BURST_LEAD = 0.25


@dataclass
class Result:
    language: Optional[str]  # Qwen's name, e.g. "English"; None when not detected
    text: str


class Pcm:
    """16 kHz signed 16-bit audio kept in fixed blocks, for decode jobs on the inference thread to read.

    Appending never moves stored audio (a bytearray reallocates, and cannot grow at all while a job holds
    a view of it), and samples below a snapshot's length are never written again, so a job reads its
    snapshot without a lock while the event loop keeps appending.
    """

    BLOCK = SAMPLE_RATE  # samples per block: 32 KB, one second

    def __init__(self) -> None:
        self._blocks: List[np.ndarray] = []
        self.samples = 0

    def extend(self, pcm16: bytes) -> None:
        new = np.frombuffer(pcm16, dtype=np.int16)
        while len(new):
            offset = self.samples % self.BLOCK
            if offset == 0:
                self._blocks.append(np.empty(self.BLOCK, dtype=np.int16))
            n = min(self.BLOCK - offset, len(new))
            self._blocks[-1][offset : offset + n] = new[:n]
            new = new[n:]
            self.samples += n

    def snapshot(self, samples: int) -> "Snapshot":
        return Snapshot(self._blocks[: -(-samples // self.BLOCK)], samples)

    def clear(self) -> None:
        self._blocks = []
        self.samples = 0


@dataclass
class Snapshot:
    """The first `samples` of a `Pcm`; `audio()` copies them out as float audio (on the inference thread)."""

    blocks: Sequence[np.ndarray]
    samples: int

    def audio(self) -> np.ndarray:
        out = np.empty(self.samples, dtype=np.float32)
        for i, block in enumerate(self.blocks):
            start = i * Pcm.BLOCK
            part = block[: self.samples - start]
            np.multiply(part, 1.0 / 32768.0, out=out[start : start + len(part)], casting="unsafe")
        return out


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
        self._pcm = Pcm()
        self._committed = CommittedPrefix()
        self._sent = ""
        self._decoded_samples = 0
        self._new_audio = asyncio.Event()
        self._closed = False
        self._abort = False  # read by the inference thread between two tokens
        self._prompt: Optional[str] = None
        self._last_output: Optional[tuple] = None  # (samples, full raw output) of the last step
        self._inflight_samples = -1
        self._arrivals: collections.deque = collections.deque()  # (monotonic time, samples so far)
        self._step_task = asyncio.create_task(self._step_loop(), name="asr steps")
        self._eager = False  # step_now: one step over what has arrived, however little is new
        self.steps = 0

    @property
    def samples(self) -> int:
        return self._pcm.samples

    def add_audio(self, pcm16: bytes) -> None:
        """16 kHz mono signed 16-bit audio, whole samples."""
        self._pcm.extend(pcm16)
        now = time.monotonic()
        self._arrivals.append((now, self._pcm.samples))
        while len(self._arrivals) > 1 and self._arrivals[1][0] <= now - BURST_WINDOW:
            self._arrivals.popleft()
        self._new_audio.set()

    def step_now(self) -> None:
        """Decode what has arrived now, though less than a step's worth of it is new: the speaker paused, and
        if the pause is the end, this step's output is the final transcript (`finish` reuses it)."""
        self._eager = True
        self._new_audio.set()

    def _in_burst(self) -> bool:
        """The audio is running ahead of the clock: over the last BURST_WINDOW seconds (or since the first
        audio), more than BURST_LEAD seconds of audio arrived beyond the time that passed."""
        now = time.monotonic()
        cutoff = now - BURST_WINDOW
        before, since = 0, None  # samples that arrived before the window, and when the window starts
        for arrived, samples in self._arrivals:
            if arrived > cutoff:
                break
            before, since = samples, cutoff
        if since is None:
            since = self._arrivals[0][0] if self._arrivals else now
        return (self.samples - before) / SAMPLE_RATE - (now - since) > BURST_LEAD

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
        snapshot = self._pcm.snapshot(samples)
        parts: List[Callable[[], np.ndarray]] = []
        if samples > self._window_samples:
            split = await self._handle.run(lambda _engine: _split(snapshot.audio()), Priority.REALTIME)
            parts = [(lambda part=part: part) for part in split]
            raw = await self._decode(parts.pop(0), prefix=self._committed.ids)
        elif self._last_output is not None and self._last_output[0] == samples:
            raw = self._last_output[1]  # no audio since the last step: its whole output is final
        else:
            raw = await self._decode(snapshot.audio, prefix=self._committed.ids)
        texts = [raw]
        for part in parts:
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
        """Stop at once: a running step ends at its next token, and the audio is let go."""
        self._closed = True
        self._abort = True
        self._pcm.clear()
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
            eager, self._eager = self._eager and samples > self._decoded_samples, False
            if samples > self._window_samples or (samples - self._decoded_samples < self._chunk_samples and not eager):
                continue
            if not eager and self._in_burst():
                await asyncio.sleep(BURST_WINDOW / 3)
                self._new_audio.set()  # look again, with whatever arrived meanwhile
                continue
            started = time.monotonic()
            self._inflight_samples = samples
            try:
                raw = await self._step(self._pcm.snapshot(samples))
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

    def _run_decode(self, engine: "AsrEngine", audio: np.ndarray, prefix: List[int]) -> List[int]:
        if self._prompt is None:
            self._prompt = engine.prompt(self._context, self._language)
        cap = max(max_new_tokens_for(len(audio) / SAMPLE_RATE) - len(prefix), 8)
        return engine.decode(audio, self._prompt, prefix, max_new_tokens=cap, should_stop=lambda: self._abort)

    async def _step(self, snapshot: Snapshot) -> Optional[str]:
        """One streaming step; returns the committed raw text, or None when it was aborted."""

        def job(engine: "AsrEngine") -> Optional[str]:
            audio = snapshot.audio()
            generated = self._run_decode(engine, audio, self._committed.ids)
            if self._abort:
                # cut short by audio-stop: its tokens are as good as any step's, minus the rollback
                self._committed.after_step(generated)
                return None
            self._last_output = (len(audio), engine.text(self._committed.ids + generated))
            self._committed.after_step(generated)
            return engine.text(self._committed.ids)

        return await self._handle.run(job, Priority.REALTIME)

    async def _decode(self, audio: Callable[[], np.ndarray], prefix: List[int]) -> str:
        """Raw output (prefix included) of one decode over `audio()`, called on the inference thread."""

        def job(engine: "AsrEngine") -> str:
            return engine.text(list(prefix) + self._run_decode(engine, audio(), list(prefix)))

        return await self._handle.run(job, Priority.REALTIME)


def _split(audio: np.ndarray) -> List[np.ndarray]:
    from .engine import split_long_audio

    return split_long_audio(audio)
