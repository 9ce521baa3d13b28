"""Wyoming events of one connection: describe, synthesize, and streamed synthesis."""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from .app import MODEL_KEYS, TtsApp
from .languages import to_qwen_name
from .reading import Reading
from .sentences import SentenceSplitter, split_text
from .voices import UnknownVoice

_LOGGER = logging.getLogger(__name__)

MAX_TEXT_CHARS = 5000  # per request; a longer text gets an error, not a minutes-long wait
TOO_LONG = (f"The text is over {MAX_TEXT_CHARS} characters, the limit of one request; "
            "send it as several requests")


class TtsEventHandler(AsyncEventHandler):
    def __init__(self, reader, writer, app: TtsApp) -> None:
        super().__init__(reader, writer)
        self.app = app
        self._write_lock = asyncio.Lock()
        self._stream_open = False  # between synthesize-start and synthesize-stop
        self._reading: Optional[Reading] = None
        self._splitter: Optional[SentenceSplitter] = None
        self._stream_chars = 0
        # A request's audio is sent by a task, so this connection keeps reading events meanwhile
        # and a client that leaves is noticed at once (its generation stops at the next frame).
        self._finishing: Optional[asyncio.Task] = None
        self._finishing_reading: Optional[Reading] = None

    async def write_event(self, event: Event) -> None:
        async with self._write_lock:
            await super().write_event(event)

    async def handle_event(self, event: Event) -> bool:
        if self._finishing is not None and not Describe.is_type(event.type):
            await asyncio.shield(self._finishing)  # requests on one connection stay in order
            self._finishing = self._finishing_reading = None
        if Describe.is_type(event.type):
            await self.write_event(self.app.describe())
        elif Synthesize.is_type(event.type):
            if not self._stream_open:  # inside a stream it is the compat copy of the text: ignore
                await self._synthesize(Synthesize.from_event(event))
        elif SynthesizeStart.is_type(event.type):
            await self._stream_start(SynthesizeStart.from_event(event))
        elif SynthesizeChunk.is_type(event.type):
            await self._stream_chunk(SynthesizeChunk.from_event(event))
        elif SynthesizeStop.is_type(event.type):
            await self._stream_stop()
        elif Ping.is_type(event.type):
            # answered once the inference thread is free: the gateway's health probe relies on it
            await self.app.manager.inference.run(lambda: None)
            await self.write_event(Pong(text=Ping.from_event(event).text).event())
        else:
            await self._error(
                f"Unexpected event {event.type!r}: this text-to-speech server understands describe, "
                "synthesize, synthesize-start, synthesize-chunk and synthesize-stop",
                "unknown-event",
            )
        return True

    async def disconnect(self) -> None:
        reading = self._reading or self._finishing_reading
        if reading is not None:
            _LOGGER.debug("Client left mid-reading; dropping its pending sentences")
            await reading.cancel()
        if self._finishing is not None:
            self._finishing.cancel()
        self._reading = None

    # -- one-shot ---------------------------------------------------------------------------------

    async def _synthesize(self, request: Synthesize) -> None:
        if len(request.text) > MAX_TEXT_CHARS:
            await self._error(TOO_LONG, "text-too-long")
            return
        reading = await self._begin(request.voice)
        if reading is None:
            return
        for sentence in split_text(request.text):
            reading.add(sentence)
        self._finish_in_background(stream=False)

    # -- streaming --------------------------------------------------------------------------------

    async def _stream_start(self, start: SynthesizeStart) -> None:
        if self._reading is not None:
            await self._fail("synthesize-start arrived during a reading; the old one was dropped", "protocol")
        self._stream_open = True
        self._stream_chars = 0
        self._splitter = SentenceSplitter()
        await self._begin(start.voice)

    async def _stream_chunk(self, chunk: SynthesizeChunk) -> None:
        if not self._stream_open:
            await self._error("synthesize-chunk arrived without synthesize-start", "protocol")
            return
        if self._reading is None:  # the stream already failed and the client was told
            return
        self._stream_chars += len(chunk.text)
        if self._stream_chars > MAX_TEXT_CHARS:
            await self._fail(TOO_LONG, "text-too-long")
            return
        for sentence in self._splitter.add(chunk.text):
            self._reading.add(sentence)

    async def _stream_stop(self) -> None:
        if not self._stream_open:
            await self._error("synthesize-stop arrived without synthesize-start", "protocol")
            return
        self._stream_open = False
        if self._reading is None:
            return
        for sentence in self._splitter.finish():
            self._reading.add(sentence)
        self._finish_in_background(stream=True)

    # -- helpers ----------------------------------------------------------------------------------

    async def _begin(self, requested: Optional[SynthesizeVoice]) -> Optional[Reading]:
        try:
            voice = self.app.choose_voice(requested.name if requested else None)
        except UnknownVoice as err:
            await self._error(str(err), "unknown-voice")
            return None
        language = (to_qwen_name(requested.language) if requested else None) or voice.language \
            or self.app.default_language
        self._reading = Reading(
            self.app.manager, MODEL_KEYS[voice.kind], voice, language, self.app.samples_per_chunk,
            self.write_event, self.app.first_chunk_frames,
        )
        return self._reading

    def _finish_in_background(self, stream: bool) -> None:
        reading, self._reading = self._reading, None
        self._finishing = asyncio.create_task(self._finish(reading, stream))
        self._finishing_reading = reading

    async def _finish(self, reading: Reading, stream: bool) -> None:
        try:
            await reading.finish()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the model failed: tell the client, keep serving
            _LOGGER.exception("Synthesis failed")
            await self._error(f"Synthesis failed: {err}", "synthesis-failed")
            return
        if stream:
            await self.write_event(SynthesizeStopped().event())

    async def _fail(self, text: str, code: str) -> None:
        reading, self._reading = self._reading, None
        if reading is not None:
            await reading.cancel()
        await self._error(text, code)

    async def _error(self, text: str, code: str) -> None:
        _LOGGER.warning("Client error (%s): %s", code, text)
        await self.write_event(Error(text=text, code=code).event())
