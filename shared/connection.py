"""One client connection as both processes see it: events read within size limits, replies written
within a time limit.

The `wyoming` reader believes whatever sizes a header announces, so one client could make a server
buffer gigabytes. Here a header line, its JSON data and its payload each have a documented limit,
checked before anything is read; a frame over a limit, or one that is not a Wyoming event at all, gets
an `error` and the connection is closed (the stream cannot be re-synchronised after a bad frame).

A client that stops reading would otherwise block a reply for ever, and with it the work it asked
for: a write that cannot complete within `write_timeout` drops the client, which cancels its work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from dataclasses import dataclass
from typing import Optional

from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.server import AsyncEventHandler

_LOGGER = logging.getLogger(__name__)

# The largest legitimate frames: a header line is ~150 bytes (older clients inline the data, up to a
# few KiB); the longest data is a synthesize text (5,000 characters, 4 bytes each at most, escaped); an
# audio chunk of 10 s of 48 kHz stereo 32-bit audio is 3.7 MiB.
MAX_HEADER_BYTES = 64 * 1024
MAX_DATA_BYTES = 1024 * 1024
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
WRITE_TIMEOUT = 30.0
LINGER_SECONDS, LINGER_BYTES = 2.0, 8 * 1024 * 1024  # after a bad frame, see Connection._tell_and_close


class BadFrame(Exception):
    """The client sent something that is not a Wyoming event within the limits."""

    def __init__(self, text: str, code: str) -> None:
        super().__init__(text)
        self.text, self.code = text, code


@dataclass(frozen=True)
class Limits:
    header_bytes: int = MAX_HEADER_BYTES
    data_bytes: int = MAX_DATA_BYTES
    payload_bytes: int = MAX_PAYLOAD_BYTES


async def read_event(reader: asyncio.StreamReader, limits: Limits = Limits()) -> Optional[Event]:
    """The next event, or None when the client closed (also in the middle of a frame).

    Raises BadFrame for a frame over a limit or one that is not a Wyoming event."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as err:
        if err.partial.strip():
            _LOGGER.debug("Client closed in the middle of a header")
        return None
    except asyncio.LimitOverrunError:
        raise BadFrame(f"Event header line is over {limits.header_bytes} bytes", "frame-too-large") from None
    if len(line) > limits.header_bytes:
        raise BadFrame(f"Event header line is over {limits.header_bytes} bytes", "frame-too-large")
    try:
        header = json.loads(line)
    except ValueError as err:
        raise BadFrame(f"Event header is not JSON ({err})", "malformed-frame") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise BadFrame('Event header must be a JSON object with a string "type"', "malformed-frame")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise BadFrame('Event "data" must be a JSON object', "malformed-frame")
    data_length = _length(header, "data_length", limits.data_bytes)
    payload_length = _length(header, "payload_length", limits.payload_bytes)
    try:
        if data_length:
            extra = json.loads(await reader.readexactly(data_length))
            if not isinstance(extra, dict):
                raise BadFrame('Event "data" must be a JSON object', "malformed-frame")
            data.update(extra)
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        _LOGGER.debug("Client closed in the middle of a %s event", header["type"])
        return None
    except ValueError as err:
        raise BadFrame(f"Event data is not JSON ({err})", "malformed-frame") from None
    return Event(type=header["type"], data=data, payload=payload)


def _length(header: dict, key: str, limit: int) -> int:
    value = header.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadFrame(f"Event {key} must be a non-negative integer", "malformed-frame")
    if value > limit:
        raise BadFrame(f"Event {key} {value} is over the limit of {limit} bytes", "frame-too-large")
    return value


SEND_BUFFER_BYTES = 64 * 1024


def _limit_send_buffer(writer) -> None:
    """Keep what the kernel holds for a client small, so that a client that stops reading blocks our writes
    within about a second of audio (the kernel would otherwise take megabytes: minutes of speech that a
    reply would go on synthesizing, taking the inference thread from every other room)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


class Connection(AsyncEventHandler):
    """A Wyoming handler whose reads are size-limited and whose writes are serialised and time-limited."""

    write_timeout: float = WRITE_TIMEOUT
    limits: Limits = Limits()

    def __init__(self, reader, writer) -> None:
        super().__init__(reader, writer)
        # replies of one connection come from several tasks; frames must not interleave
        self._write_lock = asyncio.Lock()
        self.dropped = False
        # the protocol's view of the events both ways (a gateway.ReplyTracker; set by the server): whether a
        # request is under way, which a graceful stop lets finish
        self.replies = None
        self.in_request = False
        _limit_send_buffer(writer)

    async def write_event(self, event: Event) -> None:
        """Send an event; a client that has not taken it within `write_timeout` is dropped
        (ConnectionResetError is raised to the writer, and the read loop ends)."""
        if self.dropped:
            raise ConnectionResetError("the client was dropped")
        try:
            async with asyncio.timeout(self.write_timeout):
                async with self._write_lock:
                    await async_write_event(event, self.writer)
        except TimeoutError:
            self.drop(f"it did not read a reply for {self.write_timeout:.0f} s")
            raise ConnectionResetError("the client does not read its replies") from None
        if self.replies is not None and self.replies.worker_sent(event.type):
            self.in_request = False

    async def cut_short(self, text: str, code: str) -> None:
        """End the connection with an `error` saying why (a server that stops), if the client still reads."""
        try:
            async with asyncio.timeout(1.0):
                await self.write_event(Error(text=text, code=code).event())
        except (ConnectionError, OSError, TimeoutError):
            pass
        await self.stop()

    def drop(self, why: str) -> None:
        """Close the connection at once, discarding unsent bytes; the read loop then ends."""
        if not self.dropped:
            self.dropped = True
            _LOGGER.warning("Dropping a client: %s", why)
        self.writer.transport.abort()
        self.reader.feed_eof()

    async def run(self) -> None:
        self._is_running = True
        try:
            while self._is_running:
                try:
                    event = await read_event(self.reader, self.limits)
                    if event is None:
                        break
                    if self.replies is not None:
                        if self.replies.client_sent(event.type) or event.type in self.replies.opened_by:
                            self.in_request = True
                    if not await self.handle_event(event):
                        break
                except BadFrame as bad:
                    _LOGGER.warning("Closing a connection: %s", bad.text)
                    await self._tell_and_close(bad)
                    break
                except ConnectionError:  # the client left, or was dropped, while we answered it
                    break
        finally:
            await self.disconnect()
            self.writer.close()

    async def _tell_and_close(self, bad: BadFrame) -> None:
        try:
            await self.write_event(Error(text=f"{bad.text}; closing the connection", code=bad.code).event())
            if self.writer.can_write_eof():
                self.writer.write_eof()
            # Closing with unread input resets the connection, and the client would lose the error
            # with it; so the rest of what it sends is read and dropped, for a bounded time and size.
            async with asyncio.timeout(LINGER_SECONDS):
                left = LINGER_BYTES
                while left > 0 and (chunk := await self.reader.read(min(left, 65536))):
                    left -= len(chunk)
        except (ConnectionError, OSError, TimeoutError):
            pass
