"""The part of a connection's handler that both servers share: writes, describe, ping, errors, dispatch.

Each server's handler marks the methods of its own protocol with `@handles(EventClass)`; everything
else is here, the HTTP front's decoding and encoding of compressed audio included (shared/codec_events.py).
Unknown event types are ignored and logged at debug level, as the other Wyoming servers do: the
protocol keeps adding events (`select-program` in wyoming 1.10), and a client may send them to any
server. A known event whose data cannot be read gets an `error`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, List, Tuple

from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong

from .codec_events import MAX_FILE_BYTES, AudioEncode, AudioEncoded, AudioFile
from .connection import Connection
from .idle_policy import StandbyRequest
from .warm_up import WarmUp

_LOGGER = logging.getLogger(__name__)

Method = Callable[[Any, Any], Awaitable[None]]
HEALTH_PROBE = "health"  # the text of the gateway's probe ping


def handles(event_class: Any) -> Callable[[Method], Method]:
    """Mark a handler method as the one for `event_class` (a `wyoming` event class): the base parses
    the event with `event_class.from_event` and calls the method with the result."""

    def mark(method: Method) -> Method:
        method.handled_event = event_class  # type: ignore[attr-defined]
        return method

    return mark


class ServerEventHandler(Connection):
    """One client connection of a model server. `app` supplies `describe()`, `manager` and `write_timeout`."""

    _routes: List[Tuple[Any, Method]] = []  # per subclass: (event class, method)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        marked = [(m.handled_event, m) for m in vars(cls).values() if hasattr(m, "handled_event")]
        cls._routes = [*cls._routes, *marked]

    def __init__(self, reader, writer, app) -> None:
        super().__init__(reader, writer)
        self.app = app
        self.write_timeout = app.write_timeout
        self._file_pieces: List[bytes] = []
        self._file_bytes = 0
        self._encoder = None  # shared.codec.StreamEncoder of this connection's audio-encode pieces

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self.app.describe())
        elif Ping.is_type(event.type):
            await self._pong(event)
        elif WarmUp.is_type(event.type):
            self.app.manager.preload_in_background(self.app.preload_key, warm=True)
        elif StandbyRequest.is_type(event.type):
            self.app.manager.standby_in_background(StandbyRequest.from_event(event).reason)
        else:
            await self._dispatch(event)
        return True

    async def error(self, text: str, code: str) -> None:
        """Tell the client what went wrong with its request; the connection stays open."""
        _LOGGER.warning("Client error (%s): %s", code, text)
        await self.write_event(Error(text=text, code=code).event())

    async def _dispatch(self, event: Event) -> None:
        route = next(((c, m) for c, m in self._routes if c.is_type(event.type)), None)
        if route is None:
            _LOGGER.debug("Ignoring event of unknown type %r", event.type)
            return
        event_class, method = route
        try:
            parsed = event_class.from_event(event)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            await self.error(f"Could not read the {event.type} event ({type(err).__name__}: {err})", "malformed-event")
            return
        await method(self, parsed)

    async def _pong(self, event: Event) -> None:
        """Answered once the inference thread is idle or shows progress, so a long job (busy) answers
        and a stuck one (a hung kernel, a frozen GPU) does not: the gateway's health probe relies on
        it. The probe's ping (text "health") is answered with what the worker is doing."""
        await self.app.manager.inference.responsive()
        text = Ping.from_event(event).text
        if text == HEALTH_PROBE:
            loading = self.app.manager.loading()
            text = f"loading {' '.join(loading)}" if loading else "ok"
        await self.write_event(Pong(text=text).event())

    # -- compressed audio for the HTTP front (shared/codec_events.py), on threads of their own -----------

    async def _on_audio_file(self, piece: AudioFile) -> None:
        from wyoming.audio import AudioChunk, AudioStart, AudioStop

        from .codec import BadAudio, decode_to_pcm

        self._file_bytes += len(piece.data)
        if self._file_bytes > MAX_FILE_BYTES:
            if piece.final:
                self._file_pieces, self._file_bytes = [], 0
                await self.error(f"The file is over {MAX_FILE_BYTES // (1024 * 1024)} MB", "file-too-large")
            return
        self._file_pieces.append(piece.data)
        if not piece.final:
            return
        data, self._file_pieces, self._file_bytes = b"".join(self._file_pieces), [], 0
        try:
            pcm = await asyncio.to_thread(decode_to_pcm, data, piece.rate)
        except BadAudio as err:
            await self.error(f"{err}. Send WAV, FLAC, OGG/Opus, MP3, WebM or M4A audio", "bad-audio")
            return
        await self.write_event(AudioStart(rate=piece.rate, width=2, channels=1).event())
        step = 2 * piece.rate  # one second a chunk
        for start in range(0, len(pcm), step):
            await self.write_event(
                AudioChunk(rate=piece.rate, width=2, channels=1, audio=pcm[start : start + step]).event()
            )
        await self.write_event(AudioStop().event())

    async def _on_audio_encode(self, piece: AudioEncode) -> None:
        from .codec import ENCODED_FORMATS, StreamEncoder

        if self._encoder is None:
            if piece.format not in ENCODED_FORMATS:
                await self.error(f"Unknown audio format {piece.format!r}", "audio-format")
                return
            self._encoder = await asyncio.to_thread(StreamEncoder, piece.format, piece.rate)
        encoder = self._encoder
        out = await asyncio.to_thread(encoder.add, piece.data)
        if piece.final:
            self._encoder = None
            out += await asyncio.to_thread(encoder.finish)
        await self.write_event(AudioEncoded(out, piece.final).event())


ServerEventHandler._routes = [
    (AudioFile, ServerEventHandler._on_audio_file),
    (AudioEncode, ServerEventHandler._on_audio_encode),
]
