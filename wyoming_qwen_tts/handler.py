"""The text-to-speech protocol of one connection: synthesize, and streamed synthesis."""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from typing import Optional

from wyoming.event import Event
from wyoming.info import Describe
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from shared.handler import ServerEventHandler, handles
from shared.languages import TTS_LANGUAGES, UnsupportedLanguage

from .app import MODEL_KEYS, TtsApp
from .clone_prompts import BadReference, check_reference
from .sentences import SentenceSplitter, split_text
from .spoken_reply import SpokenReply
from .voices import CLONE, UnknownVoice

_LOGGER = logging.getLogger(__name__)

MAX_TEXT_CHARS = 5000  # per request; a longer text gets an error, not a minutes-long wait
TOO_LONG = f"The text is over {MAX_TEXT_CHARS} characters, the limit of one request; send it as several requests"
_TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")  # e.g. the colour codes of a log pasted in


class TtsEventHandler(ServerEventHandler):
    app: TtsApp

    def __init__(self, reader, writer, app: TtsApp) -> None:
        super().__init__(reader, writer, app)
        self._stream_open = False  # between synthesize-start and synthesize-stop
        self._reply: Optional[SpokenReply] = None
        self._splitter: Optional[SentenceSplitter] = None
        self._stream_chars = 0
        # A request's audio is sent by a task, so this connection keeps reading events meanwhile
        # and a client that leaves is noticed at once (its generation stops at the next frame).
        self._finishing: Optional[asyncio.Task] = None
        self._finishing_reply: Optional[SpokenReply] = None

    async def handle_event(self, event: Event) -> bool:
        if self._finishing is not None and not Describe.is_type(event.type):
            await asyncio.shield(self._finishing)  # requests on one connection stay in order
            self._finishing = self._finishing_reply = None
        return await super().handle_event(event)

    async def disconnect(self) -> None:
        reply = self._reply or self._finishing_reply
        if reply is not None:
            _LOGGER.debug("Client left mid-reply; dropping its pending sentences")
            await reply.cancel()
        if self._finishing is not None:
            self._finishing.cancel()
        self._reply = None

    # -- one-shot ---------------------------------------------------------------------------------

    @handles(Synthesize)
    async def _synthesize(self, request: Synthesize) -> None:
        if self._stream_open:  # inside a stream it is the compat copy of the text: ignore it
            return
        if len(request.text) > MAX_TEXT_CHARS:
            await self.error(TOO_LONG, "text-too-long")
            return
        reply = await self._begin(request.voice)
        if reply is None:
            return
        for sentence in split_text(_speakable(request.text)):
            reply.add(sentence)
        self._finish_in_background(stream=False)

    # -- streaming --------------------------------------------------------------------------------

    @handles(SynthesizeStart)
    async def _stream_start(self, start: SynthesizeStart) -> None:
        if self._reply is not None:
            await self._fail("synthesize-start arrived during a reply; the old one was dropped", "protocol")
        self._stream_open = True
        self._stream_chars = 0
        self._splitter = SentenceSplitter()
        await self._begin(start.voice)

    @handles(SynthesizeChunk)
    async def _stream_chunk(self, chunk: SynthesizeChunk) -> None:
        if not self._stream_open:
            await self.error("synthesize-chunk arrived without synthesize-start", "protocol")
            return
        if self._reply is None:  # the stream already failed and the client was told
            return
        self._stream_chars += len(chunk.text)
        if self._stream_chars > MAX_TEXT_CHARS:
            await self._fail(TOO_LONG, "text-too-long")
            return
        for sentence in self._splitter.add(_speakable(chunk.text)):
            self._reply.add(sentence)

    @handles(SynthesizeStop)
    async def _stream_stop(self, _stop: SynthesizeStop) -> None:
        if not self._stream_open:
            await self.error("synthesize-stop arrived without synthesize-start", "protocol")
            return
        self._stream_open = False
        if self._reply is None:
            return
        for sentence in self._splitter.finish():
            self._reply.add(sentence)
        self._finish_in_background(stream=True)

    # -- helpers ----------------------------------------------------------------------------------

    async def _begin(self, requested: Optional[SynthesizeVoice]) -> Optional[SpokenReply]:
        try:
            voice = self.app.choose_voice(requested.name if requested else None)
        except UnknownVoice as err:
            await self.error(str(err), "unknown-voice")
            return None
        if voice.kind == CLONE:  # before the model loads; checked again before its prompt is computed
            try:
                await asyncio.to_thread(check_reference, voice.folder)
            except BadReference as err:
                await self.error(str(err), "voice-reference")
                return None
        language = _request_language(requested) or voice.language or self.app.default_language
        self._reply = SpokenReply(
            self.app.manager,
            MODEL_KEYS[voice.kind],
            voice,
            language,
            self.app.samples_per_chunk,
            self.write_event,
            self.app.first_chunk_frames,
        )
        return self._reply

    def _finish_in_background(self, stream: bool) -> None:
        reply, self._reply = self._reply, None
        self._finishing = asyncio.create_task(self._finish(reply, stream))
        self._finishing_reply = reply

    async def _finish(self, reply: SpokenReply, stream: bool) -> None:
        try:
            await reply.finish()
        except asyncio.CancelledError:
            raise
        except ConnectionError:  # the client left, or was dropped for not reading: nobody to tell
            return
        except BadReference as err:  # the reference changed since the request began
            await self.error(str(err), "voice-reference")
            return
        except Exception as err:  # the model failed: tell the client, keep serving
            _LOGGER.exception("Synthesis failed")
            await self.error(f"Synthesis failed: {err}", "synthesis-failed")
            return
        if stream:
            await self.write_event(SynthesizeStopped().event())

    async def _fail(self, text: str, code: str) -> None:
        reply, self._reply = self._reply, None
        if reply is not None:
            await reply.cancel()
        await self.error(text, code)


def _request_language(requested: Optional[SynthesizeVoice]) -> Optional[str]:
    """The request's language when Qwen3-TTS speaks it. Home Assistant sends the pipeline's language,
    which may be one the model lacks: the voice's own language is then the better choice than an error."""
    if requested is None:
        return None
    try:
        return TTS_LANGUAGES.to_qwen_name(requested.language)
    except UnsupportedLanguage:
        _LOGGER.debug("Request language %r is not a Qwen3-TTS language; using the voice's", requested.language)
        return None


def _speakable(text: str) -> str:
    """The text without terminal escape sequences and control characters (NUL, BEL...): they are not
    speech, and each would still count toward the sentence's frame cap. Format characters such as the
    right-to-left mark and the emoji joiner stay."""
    text = _TERMINAL_ESCAPE.sub("", text)
    return "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) != "Cc")
