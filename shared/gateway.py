"""The gateway: the light process the user starts (no torch, numpy or Qwen packages in it).

It owns the listener and answers `describe` itself, so discovery and Home Assistant's 1-second
describe never wait on a model. On a connection's first other event it makes sure a worker runs, then
relays events both ways unchanged. With no relayed connection for `--idle-unload` seconds the worker
goes to standby, and later it is stopped, which hands back every byte the model, torch and CUDA held
(shared/idle_policy.py has the tiers). A `warm-up` event (shared/warm_up.py) starts the worker before a
request comes; with `--spare-worker` a fresh worker, its imports done and no model loaded, waits from
start-up and after each stop.

The relay knows no protocol of its own. Each server kind gives it a `ReplyTracker` that says, from the
event types passing by, when the client waits for the worker's answer and when that answer is complete;
the request timeout runs only in between. When it runs out, the worker is asked what it is doing: a
model still loading (a first download of several GB) is waited for; otherwise the client gets a
`timeout` error, and a worker whose inference thread shows no progress at all is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable, FrozenSet, Optional

from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong

from .background import BackgroundTasks
from .connection import WRITE_TIMEOUT, Connection
from .handler import HEALTH_PROBE
from .idle_policy import IdlePolicy
from .supervisor import WorkerSupervisor, WorkerUnavailable
from .warm_up import PeerWarmer, WarmUp

_LOGGER = logging.getLogger(__name__)


class ReplyTracker:
    """Follows one relayed connection: does the client wait for an answer from the worker now?

    This base knows the events every Wyoming server answers; a server kind adds its own protocol's by
    extending the two sets, or by overriding the two methods where the answer depends on state.
    """

    waits_after: FrozenSet[str] = frozenset({"describe", "ping"})  # client events that ask for an answer
    completed_by: FrozenSet[str] = frozenset({"info", "pong", "error"})  # worker events that end it
    # client events that begin a request before the client waits (a stream of audio or of text): from
    # them on a stop lets the request finish (shared/graceful_stop.py)
    opened_by: FrozenSet[str] = frozenset()

    def client_sent(self, event_type: str) -> bool:
        """True when the client now waits for the worker."""
        return event_type in self.waits_after

    def worker_sent(self, event_type: str) -> bool:
        """True when this event completes the answer the client waited for."""
        return event_type in self.completed_by


PROBE_GRACE = 5.0  # seconds a busy but healthy worker may take to answer the probe at a timeout


class Gateway:
    def __init__(
        self,
        supervisor: WorkerSupervisor,
        describe: Callable[[], Event],
        idle_unload: float,
        request_timeout: float,
        new_tracker: Callable[[], ReplyTracker] = ReplyTracker,
        write_timeout: float = WRITE_TIMEOUT,
        peer_warmer: Optional[PeerWarmer] = None,
        spare_worker: bool = False,
        idle_exit: float = -1,
    ) -> None:
        self.supervisor = supervisor
        self.peer_warmer = peer_warmer  # `--warm-peer`: told of the client events that pass
        self.describe = describe
        self.new_tracker = new_tracker
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.idle = IdlePolicy(supervisor, idle_unload, idle_exit, spare_worker)
        self._tasks = BackgroundTasks()

    def handler_factory(self, reader, writer) -> "GatewayHandler":
        return GatewayHandler(reader, writer, self)

    # -- worker lifetime (shared/idle_policy.py) ------------------------------------------------------

    def user_arrived(self) -> None:
        self.idle.user_arrived()

    def user_left(self) -> None:
        self.idle.user_left()

    def start_spare(self) -> None:
        self.idle.start_spare()

    async def preload(self) -> None:
        """`--preload`: start the worker now; it goes to standby when idle like any other."""
        try:
            await self.supervisor.start()
        except WorkerUnavailable as err:
            _LOGGER.error("Preloading failed: %s", err)
            return
        self.idle.used_without_connection()  # its worker loads the model

    def warm_up(self) -> None:
        """A `warm-up` event: start the worker and have it load its default model, in the background; the
        idle countdown starts again, as after a request."""
        self.idle.used_without_connection()
        self._tasks.spawn(self._warm_up())

    async def _warm_up(self) -> None:
        failed = await self.supervisor.send(WarmUp().event())
        if failed is not None:
            _LOGGER.warning("Warm-up failed: %s", failed)

    # -- health ---------------------------------------------------------------------------------

    async def worker_status(self, within: float) -> Optional[str]:
        """What the running worker says it does ("ok", "loading <models>"), or None without an answer."""
        if self.supervisor.pid is None:
            return None
        try:
            return await asyncio.wait_for(self._probe(), within)
        except (asyncio.TimeoutError, OSError, WorkerUnavailable):
            return None

    def check_health_soon(self) -> None:
        self._tasks.spawn(self.check_health())

    async def check_health(self) -> None:
        """After a request timed out: a worker whose inference thread shows no progress is restarted."""
        pid = self.supervisor.pid
        if pid is None:
            return
        # a worker that does not answer within another timeout period is not coming back
        if await self.worker_status(self.request_timeout) is not None:
            _LOGGER.info("Worker pid %s answers again after the timeout", pid)
            return
        if self.supervisor.pid == pid:
            await self.supervisor.kill(
                f"its inference thread showed no progress for {self.request_timeout:.0f} s after a request timed out"
            )

    async def _probe(self) -> Optional[str]:
        reader, writer = await self.supervisor.connect()
        try:
            await async_write_event(Ping(text=HEALTH_PROBE).event(), writer)
            while (event := await async_read_event(reader)) is not None:
                if Pong.is_type(event.type):
                    return Pong.from_event(event).text or "ok"
            return None
        finally:
            writer.close()


class GatewayHandler(Connection):
    """One client connection: describe and ping answered here, everything else relayed to the worker."""

    def __init__(self, reader, writer, gateway: Gateway) -> None:
        super().__init__(reader, writer)
        self.gateway = gateway
        self.write_timeout = gateway.write_timeout
        self._worker: Optional[tuple] = None
        self._user = False  # counted as a user of the worker
        self._closing = False  # told why its request ended: nothing more is relayed
        self._pump: Optional[asyncio.Task] = None
        self._watchdog: Optional[asyncio.Task] = None
        self._waiting_since: Optional[float] = None  # the client waits for the worker since then
        self._last_client_event = time.monotonic()
        self._replies = gateway.new_tracker()

    async def handle_event(self, event: Event) -> bool:
        if self._closing:
            return False  # never a new worker for the rest of a lost request
        if self._worker is None:
            if Describe.is_type(event.type):
                await self.write_event(self.gateway.describe())
                return True
            if Ping.is_type(event.type):  # alive is all a ping asks; it starts no worker
                await self.write_event(Pong(text=Ping.from_event(event).text).event())
                return True
            if WarmUp.is_type(event.type):
                self.gateway.warm_up()
                return True
            try:
                await self._open_relay()
            except (WorkerUnavailable, OSError) as err:
                # this connection's request is lost: one error, then close (not one per audio chunk)
                await self._give_up(str(err), "worker-unavailable")
                return False
        self._last_client_event = time.monotonic()
        if self.gateway.peer_warmer is not None:
            self.gateway.peer_warmer.saw(event.type)
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
        # a client waiting for the worker to start is a user: the idle timer must not stop that start
        self._user = True
        self.gateway.user_arrived()
        self._worker = await self.gateway.supervisor.connect()
        self._pump = asyncio.create_task(self._pump_replies())
        self._watchdog = asyncio.create_task(self._watch_time())

    async def _close_relay(self) -> None:
        worker, self._worker = self._worker, None
        for task in (self._pump, self._watchdog):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if worker is not None:
            worker[1].close()
        if self._user:
            self._user = False
            self.gateway.user_left()

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
            try:
                await self.write_event(event)
            except ConnectionError:  # the client left, or was dropped for not reading: its work stops
                await self._close_relay()
                return

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
            if since is None:
                if time.monotonic() - self._last_client_event >= timeout:
                    # a relayed client that says nothing keeps the worker (and its memory) for ever
                    await self._give_up(
                        f"The client sent nothing for {timeout:.0f} s (--request-timeout); closing the connection.",
                        "timeout",
                    )
                    return
                continue
            if time.monotonic() - since < timeout:
                continue
            status = await self.gateway.worker_status(min(PROBE_GRACE, timeout))
            if status is not None and status.startswith("loading") and self._waiting_since is not None:
                _LOGGER.info("No answer for %.0f s: the worker is still %s; waiting on", timeout, status)
                self._waiting_since = time.monotonic()
                continue
            _LOGGER.error("Request timed out: no answer from the worker for %.0f s", timeout)
            self._waiting_since = None
            if status is None:
                self.gateway.check_health_soon()
            await self._give_up(
                f"The server gave no answer for {timeout:.0f} s (--request-timeout) and the request was abandoned.",
                "timeout",
            )
            return

    async def _give_up(self, text: str, code: str) -> None:
        """Tell the client why its request ends (if it still listens), then close both sides."""
        self._closing = True
        with contextlib.suppress(Exception):
            await self.write_event(Error(text=text, code=code).event())
        await self._close_relay()
        await self.stop()
