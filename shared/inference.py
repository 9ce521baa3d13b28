"""The one inference thread of a server process.

All model code runs here, never on the asyncio loop. torch on one device gains nothing from running
two models at once, so jobs run one at a time, in priority order: real-time work (a live utterance,
the first sentence of a reply) before bulk work (later sentences), first come first served within a
priority.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import queue
import threading
from typing import Any, Callable, TypeVar

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


class Priority(enum.IntEnum):
    REALTIME = 0
    BULK = 1


_current = threading.local()  # per thread: the InferenceThread running on it, if any


def heartbeat() -> None:
    """Model code calls this between two steps (a token, a frame): the inference thread is busy, not stuck.

    The health probe of the gateway tells the two apart by it; called anywhere else it does nothing.
    """
    thread = getattr(_current, "inference", None)
    if thread is not None:
        thread.beats += 1


class InferenceThread:
    """Runs callables on one daemon thread, ordered by (priority, arrival)."""

    def __init__(self, name: str = "inference") -> None:
        self._queue: "queue.PriorityQueue[tuple[int, int, Any]]" = queue.PriorityQueue()
        self._order = itertools.count()
        self.beats = 0  # heartbeats, job starts and ends: progress the health probe can see
        self.busy = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    async def responsive(self, poll: float = 0.02) -> None:
        """Return once the thread is idle or shows progress (a heartbeat, a job starting or ending).

        A job that runs for minutes but beats between its steps answers at once; a thread that is
        stuck (a hung kernel, a frozen GPU) never does.
        """
        beats = self.beats
        while self.busy and self.beats == beats:
            await asyncio.sleep(poll)

    async def run(self, fn: Callable[[], T], priority: Priority = Priority.REALTIME) -> T:
        """Run `fn()` on the inference thread and return its result.

        Cancelling the awaiting task before the job starts drops the job; once it runs it finishes
        (model code has no safe cancellation point; callers pass their own stop flags for that).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._queue.put((int(priority), next(self._order), (fn, future, loop)))
        return await future

    def close(self) -> None:
        self._queue.put((-1, next(self._order), None))

    def _loop(self) -> None:
        _current.inference = self
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            fn, future, loop = job
            if future.cancelled():
                continue
            self.busy = True
            self.beats += 1
            try:
                result = fn()
            except BaseException as err:  # delivered to the awaiting task
                _deliver(loop, _set_exception, future, err)
            else:
                _deliver(loop, _set_result, future, result)
            finally:
                self.busy = False
                self.beats += 1


def _deliver(loop, setter, future, value) -> None:
    try:
        loop.call_soon_threadsafe(setter, future, value)
    except RuntimeError:  # the loop closed meanwhile (shutting down): nobody waits any more
        pass


def _set_result(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future, err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)
