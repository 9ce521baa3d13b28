"""The worker's tiers, and every timer that moves it between them: one object, owned by the gateway.

    tier     entered by                          the worker holds               the next request waits for
    loaded   a request, --preload, warm-up       everything                     nothing
    standby  --idle-unload s with no connection  the model; its weights are     its pages (from the page
                                                 file pages the kernel may      cache, or the disk if the
                                                 reclaim                        kernel took them)
    stopped  --idle-exit s more in standby, or   nothing: no worker process     a worker start and a load
             memory pressure

`--idle-exit 0` stops the worker at `--idle-unload` (no standby); `--idle-exit -1` (the default) keeps the
standby until memory runs short. `--idle-unload -1` keeps the model loaded. With `--spare-worker` a fresh
worker with its imports done (no model) waits in the stopped tier. Each change of tier is logged here; the
worker logs what its standby moved (shared/standby.py).

Memory pressure, checked every few seconds in standby: the kernel's pressure stall information (tasks
stalled on memory for over 10% of the last 10 s), or less than 5% of memory available; both for the
container's cgroup where it has a memory limit, else for the whole system. Then the worker exits: its file
pages were already the kernel's to take, but torch's own few hundred MiB were not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

from wyoming.event import Event, Eventable

from .background import BackgroundTasks
from .supervisor import WorkerSupervisor, WorkerUnavailable

_LOGGER = logging.getLogger(__name__)

PRESSURE_CHECK_SECONDS = 5.0
PRESSURE_STALL_PERCENT = 10.0  # "some avg10" of /proc/pressure/memory
MIN_AVAILABLE_SHARE = 0.05  # of MemTotal

CGROUP = "/sys/fs/cgroup"  # this process's cgroup (v2) as a container sees it
PROC = "/proc"

_TYPE = "standby"


@dataclass
class StandbyRequest(Eventable):
    """Sent by the gateway to its worker: nobody has used you for a while, go to standby."""

    reason: str = ""

    @staticmethod
    def is_type(event_type: str) -> bool:
        return event_type == _TYPE

    def event(self) -> Event:
        return Event(type=_TYPE, data={"reason": self.reason})

    @staticmethod
    def from_event(event: Event) -> "StandbyRequest":
        return StandbyRequest(reason=str((event.data or {}).get("reason", "")))


def memory_pressure() -> Optional[str]:
    """Why memory is short now, or None: in this container's cgroup where it has its own figures (a memory
    limit), else in the whole system."""
    for pressure_file in (f"{CGROUP}/memory.pressure", f"{PROC}/pressure/memory"):
        stalled = _stalled_percent(pressure_file)
        if stalled is not None:
            if stalled >= PRESSURE_STALL_PERCENT:
                return f"tasks stalled on memory {stalled:.0f}% of the last 10 s"
            break
    limit = _read_int(f"{CGROUP}/memory.max")  # None: no limit ("max") or no cgroup v2
    if limit is not None:
        used = _read_int(f"{CGROUP}/memory.current") or 0
        total, available = limit // 1024, (limit - used) // 1024  # KiB; page cache counts as used here
    else:
        values = {}
        try:
            with open(f"{PROC}/meminfo") as meminfo:
                for line in meminfo:
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0])
            total, available = values["MemTotal"], values["MemAvailable"]
        except (OSError, ValueError, KeyError):
            return None
    if available < MIN_AVAILABLE_SHARE * total:
        return f"{available / 1024:.0f} MiB of {total / 1024:.0f} MiB available"
    return None


def _stalled_percent(path: str) -> Optional[float]:
    try:
        with open(path) as pressure:
            for line in pressure:
                if line.startswith("some"):
                    return float(line.split()[1].split("=")[1])
    except (OSError, ValueError, IndexError):
        pass  # no pressure information (an older kernel, some containers)
    return None


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


class IdlePolicy:
    LOADED, STANDBY, STOPPED = "loaded", "standby", "stopped"

    def __init__(
        self,
        supervisor: WorkerSupervisor,
        idle_unload: float,
        idle_exit: float = -1,
        spare_worker: bool = False,
        pressure: Callable[[], Optional[str]] = memory_pressure,
    ) -> None:
        self.supervisor = supervisor
        self.idle_unload = idle_unload
        self.idle_exit = idle_exit
        self.spare_worker = spare_worker
        self.pressure = pressure
        self.tier = self.STOPPED
        self.users = 0  # connections relayed to the worker, or waiting for it to start
        self._worker_used = False  # since it started; an unused worker is a spare and holds no model
        self._last_use_end = time.monotonic()
        self._timer: Optional[asyncio.TimerHandle] = None
        self._pressure_watch: Optional[asyncio.Task] = None
        self._tasks = BackgroundTasks()

    # -- events ---------------------------------------------------------------------------------------

    def user_arrived(self) -> None:
        self.users += 1
        self._worker_used = True
        self._cancel_timers()
        if self.tier == self.STANDBY:
            _LOGGER.info("Worker pid %s leaves standby: a request", self.supervisor.pid)
        self.tier = self.LOADED

    def user_left(self) -> None:
        self.users -= 1
        self._last_use_end = time.monotonic()
        if self.users == 0:
            self._arm(self.idle_unload, self._idle)

    def used_without_connection(self) -> None:
        """`--preload` or a `warm-up` event: the worker loads its model; the idle countdown starts again."""
        self._worker_used = True
        self._last_use_end = time.monotonic()
        if self.tier == self.STANDBY:
            _LOGGER.info("Worker pid %s leaves standby: warm-up", self.supervisor.pid)
        self.tier = self.LOADED
        if self.users == 0:
            self._cancel_timers()
            self._arm(self.idle_unload, self._idle)

    def start_spare(self) -> None:
        """`--spare-worker`: a fresh worker that imports and listens, and loads a model only when asked."""
        self._worker_used = False
        self._tasks.spawn(self._start_spare())

    # -- timers ---------------------------------------------------------------------------------------

    def _arm(self, seconds: float, then: Callable) -> None:
        if seconds < 0:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, lambda: self._tasks.spawn(then()))

    def _cancel_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pressure_watch is not None:
            self._pressure_watch.cancel()
            self._pressure_watch = None

    def _idle_for(self) -> float:
        return time.monotonic() - self._last_use_end

    async def _idle(self) -> None:
        self._timer = None
        if self.users > 0 or not self.supervisor.running:
            return
        if self.spare_worker and not self._worker_used:
            return  # the spare: it holds no model
        why = f"no connection for {self._idle_for():.1f} s (--idle-unload {self.idle_unload:g})"
        if self.idle_exit == 0:
            await self._stop(f"{why}; handing back its memory")
            return
        if not await self._send_standby(why):
            await self._stop(f"{why}; it did not take the standby request")
            return
        self.tier = self.STANDBY
        then = "until memory runs short" if self.idle_exit < 0 else f"for up to {self.idle_exit:g} s (--idle-exit)"
        _LOGGER.info("Worker pid %s in standby after %s; it stays %s", self.supervisor.pid, why, then)
        self._arm(self.idle_exit, self._exit)
        self._pressure_watch = self._tasks.spawn(self._watch_pressure())

    async def _exit(self) -> None:
        self._timer = None
        if self.users == 0 and self.tier == self.STANDBY:
            idle = f"no connection for {self._idle_for():.1f} s (--idle-exit {self.idle_exit:g} after standby)"
            await self._stop(f"{idle}; handing back its memory")

    async def _watch_pressure(self) -> None:
        while self.tier == self.STANDBY and self.users == 0:
            await asyncio.sleep(PRESSURE_CHECK_SECONDS)
            if self.tier != self.STANDBY or self.users > 0:
                return
            why = self.pressure()
            if why is not None:
                self._pressure_watch = None  # this task ends with the stop
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                await self._stop(f"memory pressure in standby ({why}); handing back its memory")
                return

    async def _stop(self, reason: str) -> None:
        await self.supervisor.stop(reason)
        self.tier = self.STOPPED
        _LOGGER.info("Worker stopped (%s)", reason)
        if self.spare_worker and self.users == 0:
            self.start_spare()

    async def _send_standby(self, reason: str) -> bool:
        failed = await self.supervisor.send(StandbyRequest(reason=reason).event())
        if failed is not None:
            _LOGGER.warning("Could not reach the worker for standby: %s", failed)
        return failed is None

    async def _start_spare(self) -> None:
        try:
            await self.supervisor.start()
        except WorkerUnavailable as err:
            _LOGGER.warning("Could not start a spare worker: %s", err)
            return
        _LOGGER.info("Spare worker pid %s ready (no model loaded)", self.supervisor.pid)
