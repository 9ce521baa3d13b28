"""The gateway: the light process the user starts (no torch, numpy or Qwen packages in it).

It owns the listener and answers `describe` itself, so discovery and Home Assistant's 1-second
describe never wait on a model. On a connection's first other event it makes sure a worker runs, then
relays events both ways unchanged. With no relayed connection for `--idle-unload` seconds it stops
the worker, which hands back every byte the model, torch and CUDA held.

The relay knows no protocol of its own. Each server kind gives it a `ReplyTracker` that says, from the
event types passing by, when the client waits for the worker's answer and when that answer is complete;
the request timeout runs only in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable, FrozenSet, Optional, Set

from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Describe
from wyoming.ping import Ping
from wyoming.server import AsyncEventHandler

from .supervisor import WorkerSupervisor, WorkerUnavailable

_LOGGER = logging.getLogger(__name__)


class ReplyTracker:
    """Follows one relayed connection: does the client wait for an answer from the worker now?

    This base knows the events every Wyoming server answers; a server kind adds its own protocol's by
    extending the two sets, or by overriding the two methods where the answer depends on state.
    """

    waits_after: FrozenSet[str] = frozenset({"describe", "ping"})  # client events that ask for an answer
    completed_by: FrozenSet[str] = frozenset({"info", "pong", "error"})  # worker events that end it

    def client_sent(self, event_type: str) -> bool:
        """True when the client now waits for the worker."""
        return event_type in self.waits_after

    def worker_sent(self, event_type: str) -> bool:
        """True when this event completes the answer the client waited for."""
        return event_type in self.completed_by


class Gateway:
    def __init__(
        self,
        supervisor: WorkerSupervisor,
        describe: Callable[[], Event],
        idle_unload: float,
        request_timeout: float,
        new_tracker: Callable[[], ReplyTracker] = ReplyTracker,
    ) -> None:
        self.supervisor = supervisor
        self.describe = describe
        self.new_tracker = new_tracker
        self.idle_unload = idle_unload
        self.request_timeout = request_timeout
        self._relays = 0
        self._idle_timer: Optional[asyncio.TimerHandle] = None
        self._last_relay_end = time.monotonic()
        self._tasks: Set[asyncio.Task] = set()

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
            self._idle_timer = loop.call_later(self.idle_unload, lambda: loop.create_task(self._stop_if_idle()))

    async def _stop_if_idle(self) -> None:
        self._idle_timer = None
        if self._relays == 0 and self.supervisor.running:
            idle = time.monotonic() - self._last_relay_end
            await self.supervisor.stop(
                f"no connection for {idle:.1f} s (--idle-unload {self.idle_unload:g}); handing back its memory"
            )

    def check_health_soon(self) -> None:
        task = asyncio.create_task(self.check_health())
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

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
        self._replies = gateway.new_tracker()
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
        if self._replies.client_sent(event.type):
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
            if self._replies.worker_sent(event.type):
                self._waiting_since = None
            await self.write_event(event)

    async def _worker_lost(self) -> None:
        """The worker closed on us: most likely it died. Tell the client now, then close."""
        if self._worker is None:
            return
        await asyncio.sleep(0.05)  # let the supervisor see the exit code
        process = self.gateway.supervisor.process
        code = process.returncode if process is not None else None
        await self._give_up(
            f"The speech worker process stopped (exit code {code}) and this request was lost; "
            "the next request starts a new one.",
            "worker-died",
        )

    async def _watch_time(self) -> None:
        timeout = self.gateway.request_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            since = self._waiting_since
            if since is None or time.monotonic() - since < timeout:
                continue
            _LOGGER.error("Request timed out: no answer from the worker for %.0f s", timeout)
            self._waiting_since = None
            self.gateway.check_health_soon()
            await self._give_up(
                f"The server gave no answer for {timeout:.0f} s (--request-timeout) and the request was abandoned.",
                "timeout",
            )
            return

    async def _give_up(self, text: str, code: str) -> None:
        """Tell the client why its request ends (if it still listens), then close both sides."""
        with contextlib.suppress(Exception):
            await self.write_event(Error(text=text, code=code).event())
        await self._close_relay()
        await self.stop()
