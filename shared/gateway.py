"""The gateway: the light process the user starts (no torch, numpy or Qwen packages in it).

It owns the listener and answers `describe` itself, so discovery and Home Assistant's 1-second
describe never wait on a model. On a connection's first other event it makes sure a worker runs, then
relays events both ways unchanged. With no relayed connection for `--idle-unload` seconds it stops
the worker, which hands back every byte the model, torch and CUDA held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable, Optional

from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Describe
from wyoming.ping import Ping
from wyoming.server import AsyncEventHandler

from .supervisor import WorkerSupervisor, WorkerUnavailable

_LOGGER = logging.getLogger(__name__)


# client events after which the client waits for the worker's answer
_INPUT_DONE = {"audio-stop", "synthesize", "synthesize-stop", "describe", "ping"}
_REPLY_DONE = {"transcript-stop", "synthesize-stopped", "error", "info", "pong"}


class Gateway:
    def __init__(
        self,
        supervisor: WorkerSupervisor,
        describe: Callable[[], Event],
        idle_unload: float,
        request_timeout: float,
    ) -> None:
        self.supervisor = supervisor
        self.describe = describe
        self.idle_unload = idle_unload
        self.request_timeout = request_timeout
        self._relays = 0
        self._idle_timer: Optional[asyncio.TimerHandle] = None
        self._last_relay_end = time.monotonic()

    def handler_factory(self, reader, writer) -> "GatewayHandler":
        return GatewayHandler(reader, writer, self)

    # -- worker lifetime ------------------------------------------------------------------------

    def relay_opened(self) -> None:
        self._relays += 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def relay_closed(self) -> None:
        self._relays -= 1
        self._last_relay_end = time.monotonic()
        if self._relays == 0 and self.idle_unload >= 0:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(
                self.idle_unload, lambda: loop.create_task(self._stop_if_idle())
            )

    async def _stop_if_idle(self) -> None:
        self._idle_timer = None
        if self._relays == 0 and self.supervisor.running:
            idle = time.monotonic() - self._last_relay_end
            await self.supervisor.stop(
                f"no connection for {idle:.1f} s (--idle-unload {self.idle_unload:g}); handing back its memory"
            )

    async def check_health(self) -> None:
        """After a request timed out: a worker whose inference thread answers no probe is restarted."""
        pid = self.supervisor.pid
        if pid is None:
            return
        try:
            # a worker that does not answer within another timeout period is not coming back
            answered = await asyncio.wait_for(self._probe(), self.request_timeout)
            if answered:
                _LOGGER.info("Worker pid %s recovered after the timeout", pid)
                return
        except (asyncio.TimeoutError, OSError, WorkerUnavailable):
            pass
        if self.supervisor.pid == pid:
            await self.supervisor.kill(
                f"its inference thread did not answer a probe within {self.request_timeout:.0f} s"
            )


    async def _probe(self) -> bool:
        reader, writer = await self.supervisor.connect()
        try:
            await async_write_event(Ping(text="health").event(), writer)
            while (event := await async_read_event(reader)) is not None:
                if event.type == "pong":
                    return True
            return False
        finally:
            writer.close()


class GatewayHandler(AsyncEventHandler):
    """One client connection: describe answered here, everything else relayed to the worker."""

    def __init__(self, reader, writer, gateway: Gateway) -> None:
        super().__init__(reader, writer)
        self.gateway = gateway
        self._worker: Optional[tuple] = None
        self._pump: Optional[asyncio.Task] = None
        self._watchdog: Optional[asyncio.Task] = None
        self._waiting_since: Optional[float] = None  # the client waits for the worker since then
        self._in_stream = False
        self._lock = asyncio.Lock()

    async def write_event(self, event: Event) -> None:
        async with self._lock:
            await super().write_event(event)

    async def handle_event(self, event: Event) -> bool:
        if self._worker is None:
            if Describe.is_type(event.type):
                await self.write_event(self.gateway.describe())
                return True
            try:
                await self._open_relay()
            except (WorkerUnavailable, OSError) as err:
                await self.write_event(Error(text=str(err), code="worker-unavailable").event())
                return True
        if event.type == "synthesize-start":
            self._in_stream = True
        if event.type in _INPUT_DONE and not (event.type == "synthesize" and self._in_stream):
            self._waiting_since = time.monotonic()
        try:
            await async_write_event(event, self._worker[1])
        except (ConnectionError, OSError):
            await self._worker_lost()
            return False
        return True

    async def disconnect(self) -> None:
        await self._close_relay()

    async def _open_relay(self) -> None:
        self._worker = await self.gateway.supervisor.connect()
        self.gateway.relay_opened()
        self._pump = asyncio.create_task(self._pump_replies())
        self._watchdog = asyncio.create_task(self._watch_time())

    async def _close_relay(self) -> None:
        if self._worker is None:
            return
        worker, self._worker = self._worker, None
        for task in (self._pump, self._watchdog):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        worker[1].close()
        self.gateway.relay_closed()

    async def _pump_replies(self) -> None:
        reader = self._worker[0]
        while True:
            try:
                event = await async_read_event(reader)
            except (ConnectionError, OSError, EOFError):  # EOFError: died in the middle of an event
                event = None
            if event is None:
                await self._worker_lost()
                return
            if self._waiting_since is not None:
                self._waiting_since = time.monotonic()  # progress resets the clock
            if event.type in _REPLY_DONE or (event.type == "audio-stop" and not self._in_stream):
                self._waiting_since = None
            if event.type == "synthesize-stopped":
                self._in_stream = False
            await self.write_event(event)

    async def _worker_lost(self) -> None:
        """The worker closed on us: most likely it died. Tell the client now, then close."""
        if self._worker is None:
            return
        await asyncio.sleep(0.05)  # let the supervisor see the exit code
        process = self.gateway.supervisor.process
        code = process.returncode if process is not None else None
        with contextlib.suppress(Exception):
            await self.write_event(Error(
                text=f"The speech worker process stopped (exit code {code}) and this request was lost; "
                "the next request starts a new one.",
                code="worker-died",
            ).event())
        await self._close_relay()
        await self.stop()

    async def _watch_time(self) -> None:
        timeout = self.gateway.request_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            since = self._waiting_since
            if since is None or time.monotonic() - since < timeout:
                continue
            _LOGGER.error("Request timed out: no answer from the worker for %.0f s", timeout)
            with contextlib.suppress(Exception):
                await self.write_event(Error(
                    text=f"The server gave no answer for {timeout:.0f} s (--request-timeout) and the request "
                    "was abandoned.",
                    code="timeout",
                ).event())
            self._waiting_since = None
            asyncio.create_task(self.gateway.check_health())
            await self._close_relay()
            await self.stop()
            return
