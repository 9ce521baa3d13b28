"""Tasks that run on their own (timers, watchers, probes), kept until they are done.

The event loop keeps only weak references to tasks, so a task nobody holds can be garbage-collected
before it finishes.
"""

from __future__ import annotations

import asyncio
from typing import Coroutine, Set


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: Set[asyncio.Task] = set()

    def spawn(self, coroutine: Coroutine, name: str | None = None) -> asyncio.Task:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)
