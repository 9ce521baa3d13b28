"""One spoken reply: the sentences of a request go in as they become known, audio events come out in order.

Sentences are synthesized one at a time on the shared inference thread. The first sentence of a
request runs at real-time priority and later ones at bulk priority, so a new request's first sentence
goes before the later sentences of a long reading in another room, and two long readings take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Awaitable, Callable, Optional

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event

from shared.audio import chunks, float_to_pcm16
from shared.inference import Priority
from shared.model_manager import ModelManager

from .engine import SAMPLE_RATE
from .voices import Voice

_LOGGER = logging.getLogger(__name__)


class SpokenReply:
    def __init__(
        self,
        manager: ModelManager,
        model_key: str,
        voice: Voice,
        language: Optional[str],
        samples_per_chunk: int,
        write_event: Callable[[Event], Awaitable[None]],
        first_chunk_frames: Optional[int] = 2,
    ) -> None:
        """first_chunk_frames: stream each sentence frame by frame, first audio after this many
        frames (0: the engine's default); None synthesizes whole sentences."""
        self._manager = manager
        self._model_key = model_key
        self.voice = voice
        self.language = language
        self._samples_per_chunk = samples_per_chunk
        self._first_chunk_frames = first_chunk_frames
        self._write_event = write_event
        self._queue: "asyncio.Queue[Optional[str]]" = asyncio.Queue()
        self._audio_started = False
        self._started_at = time.monotonic()
        self.first_audio_at: Optional[float] = None
        self.sentences_done = 0
        self._task = asyncio.create_task(self._run(), name=f"reply in {voice.name}")

    def add(self, sentence: str) -> None:
        self._queue.put_nowait(sentence)

    async def finish(self) -> None:
        """Wait until every sentence is spoken, then end the audio (audio-start/-stop even if empty)."""
        self._queue.put_nowait(None)
        await self._task
        if not self._audio_started:
            await self._start_audio()
        await self._write_event(AudioStop().event())
        _LOGGER.info(
            "Read %d sentences with %s in %.2f s (first audio after %s)",
            self.sentences_done,
            self.voice.name,
            time.monotonic() - self._started_at,
            "-" if self.first_audio_at is None else f"{self.first_audio_at - self._started_at:.2f} s",
        )

    async def cancel(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def _run(self) -> None:
        async with self._manager.use(self._model_key) as model:
            first = True
            while (sentence := await self._queue.get()) is not None:
                started = time.monotonic()
                priority = Priority.REALTIME if first else Priority.BULK
                first = False
                if self._first_chunk_frames is None:
                    seconds = await self._whole_sentence(model, sentence, priority)
                else:
                    seconds = await self._stream_sentence(model, sentence, priority)
                _LOGGER.debug(
                    "Sentence of %d chars -> %.2f s of audio in %.2f s: %s",
                    len(sentence),
                    seconds,
                    time.monotonic() - started,
                    sentence,
                )
                self.sentences_done += 1

    async def _whole_sentence(self, model, sentence: str, priority: Priority) -> float:
        stop = threading.Event()
        job = asyncio.ensure_future(
            model.run(lambda engine: engine.synthesize(sentence, self.voice, self.language, stop.is_set), priority)
        )
        try:
            audio = await job
        except BaseException:
            _abandon(job, stop)
            raise
        await self._send(audio)
        return len(audio) / SAMPLE_RATE

    async def _stream_sentence(self, model, sentence: str, priority: Priority) -> float:
        """Send a sentence's audio chunk by chunk while its frames are still being generated."""
        loop = asyncio.get_running_loop()
        audio_out: "asyncio.Queue" = asyncio.Queue()
        stop = threading.Event()

        def emit(audio) -> None:  # on the inference thread
            loop.call_soon_threadsafe(audio_out.put_nowait, audio)

        job = asyncio.ensure_future(
            model.run(
                lambda engine: engine.stream(
                    sentence, self.voice, self.language, emit, stop.is_set, self._first_chunk_frames
                ),
                priority,
            )
        )
        samples = 0
        try:
            while not (job.done() and audio_out.empty()):
                getter = asyncio.ensure_future(audio_out.get())
                try:
                    await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    got = getter.done()
                    if not got:
                        getter.cancel()
                if not got:
                    continue
                audio = getter.result()
                samples += len(audio)
                await self._send(audio)
            job.result()  # raises what the generation raised
        except BaseException:
            _abandon(job, stop)
            raise
        return samples / SAMPLE_RATE

    async def _start_audio(self) -> None:
        self._audio_started = True
        await self._write_event(AudioStart(rate=SAMPLE_RATE, width=2, channels=1).event())

    async def _send(self, audio) -> None:
        if not self._audio_started:
            await self._start_audio()
        if self.first_audio_at is None and len(audio):
            self.first_audio_at = time.monotonic()
        for piece in chunks(float_to_pcm16(audio), self._samples_per_chunk):
            await self._write_event(AudioChunk(rate=SAMPLE_RATE, width=2, channels=1, audio=piece).event())


def _abandon(job: "asyncio.Future", stop: threading.Event) -> None:
    """The reply is cancelled (a disconnect) or failed: a sentence job still queued is dropped before
    it starts, and one already running ends at its next frame."""
    stop.set()
    job.cancel()
