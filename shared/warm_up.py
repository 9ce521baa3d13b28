"""`warm-up`: a Wyoming event that asks a server to get its model ready, because a request is coming soon.

    {"type": "warm-up"}      (no data, no payload; nothing is sent back)

In a voice pipeline the text-to-speech request follows the speech-to-text within seconds. So the ASR
server, given `--warm-peer tcp://tts-host:10200`, sends `warm-up` to that address when a client starts an
utterance (`audio-start`), and the TTS server is loading while the user is still speaking and the LLM is
thinking:
- a wyoming-qwen gateway starts its worker if none runs and passes the event on, then restarts its
  `--idle-unload` countdown, as a request would;
- a worker (or `--no-gateway` server) loads its default model in the background, if it is not loaded,
  and runs one tiny inference (a process's first inference pays one-time costs a request should not);
- any other Wyoming server ignores it: servers skip event types they do not know.
The sender never waits for the peer: a peer that is down or slow costs one log line at debug level.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import FrozenSet, Iterable

from wyoming.client import AsyncClient
from wyoming.event import Event, Eventable

from .background import BackgroundTasks

_LOGGER = logging.getLogger(__name__)

_TYPE = "warm-up"
SEND_TIMEOUT = 3.0  # seconds to connect and send
MIN_INTERVAL = 2.0  # seconds between two warm-ups to the same peer


@dataclass
class WarmUp(Eventable):
    """Get your model ready: a request is probably coming."""

    @staticmethod
    def is_type(event_type: str) -> bool:
        return event_type == _TYPE

    def event(self) -> Event:
        return Event(type=_TYPE)

    @staticmethod
    def from_event(event: Event) -> "WarmUp":
        return WarmUp()


class PeerWarmer:
    """Sends `warm-up` to each peer when a client event of one of `on_types` passes (at most one per peer
    every MIN_INTERVAL seconds), in the background."""

    def __init__(self, peers: Iterable[str], on_types: FrozenSet[str]) -> None:
        self.peers = list(peers)
        self.on_types = on_types if self.peers else frozenset()
        self._last_sent = {peer: float("-inf") for peer in self.peers}
        self._tasks = BackgroundTasks()

    def saw(self, event_type: str) -> None:
        if event_type not in self.on_types:
            return
        now = time.monotonic()
        for peer in self.peers:
            if now - self._last_sent[peer] >= MIN_INTERVAL:
                self._last_sent[peer] = now
                self._tasks.spawn(send_warm_up(peer))


async def send_warm_up(uri: str) -> bool:
    """Send one `warm-up` to `uri`; False (logged at debug level) when the peer cannot be reached."""
    try:
        await asyncio.wait_for(_send(uri), SEND_TIMEOUT)
    except (OSError, asyncio.TimeoutError, ValueError) as err:
        _LOGGER.debug("Could not warm up %s: %s", uri, err or type(err).__name__)
        return False
    _LOGGER.debug("Sent warm-up to %s", uri)
    return True


async def _send(uri: str) -> None:
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(WarmUp().event())
