"""The worker process: started on demand, watched, stopped when idle or stuck.

The worker is the very same server run with `--no-gateway` on a private unix socket, started with
the interpreter (a fresh process, never a fork of one that may hold CUDA). Ending it is the only way
to hand back all memory: the model, torch's own few hundred MiB and the CUDA context.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

_LOGGER = logging.getLogger(__name__)

STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
# Start-up failures (a worker that exits before it listens) back off like model loads do
BACKOFF_FIRST = 10.0
BACKOFF_MAX = 300.0


class WorkerUnavailable(RuntimeError):
    pass


class WorkerSupervisor:
    def __init__(self, module: str, argv: List[str], start_timeout: float = 600.0) -> None:
        self._module = module
        self._argv = list(argv)
        self._start_timeout = start_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="wyoming-qwen-"))  # 0700: private to this user
        self.socket_path = self._dir / "worker.sock"
        self.process: Optional[asyncio.subprocess.Process] = None
        self._ready = False
        self._lock = asyncio.Lock()
        self._stopping = False
        self._failures = 0
        self._retry_at = 0.0
        self._last_failure = ""
        self.spawns = 0

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    async def connect(self) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to a ready worker, starting one first if needed."""
        for attempt in (1, 2):
            async with self._lock:
                if not (self.running and self._ready):
                    await self._start()
            try:
                return await asyncio.open_unix_connection(str(self.socket_path))
            except OSError:
                if attempt == 2:
                    raise
                # it died a moment ago (not reaped yet), or it no longer listens: replace it
                self._ready = False
                process = self.process
                if process is not None and process.returncode is None:
                    try:
                        await asyncio.wait_for(process.wait(), 2.0)
                    except asyncio.TimeoutError:
                        await self.kill("its socket refuses connections")
        raise AssertionError("unreachable")

    async def start(self) -> None:
        async with self._lock:
            if not (self.running and self._ready):
                await self._start()

    async def stop(self, reason: str) -> None:
        async with self._lock:
            await self._stop(reason)

    async def kill(self, reason: str) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            _LOGGER.warning("Killing worker pid %s: %s", process.pid, reason)
            self._ready = False  # from now on requests go to a new worker
            self._stopping = True
            process.kill()
            await process.wait()

    async def _start(self) -> None:
        now = time.monotonic()
        if self._failures and now < self._retry_at:
            raise WorkerUnavailable(
                f"The worker process failed to start {self._failures} time(s) ({self._last_failure}); "
                f"the next attempt is in {self._retry_at - now:.0f} s"
            )
        self.socket_path.unlink(missing_ok=True)
        args = [sys.executable, "-m", self._module, *self._argv, "--no-gateway",
                "--uri", f"unix://{self.socket_path}", "--worker-of", str(os.getpid())]
        started = time.monotonic()
        self._stopping = False
        self._ready = False
        self.process = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL)
        self.spawns += 1
        process = self.process
        _LOGGER.info("Started worker pid %s", process.pid)
        asyncio.create_task(self._watch(process))
        while True:
            if process.returncode is not None:
                self._failed(f"it exited with code {process.returncode} before listening")
            if time.monotonic() - started > self._start_timeout:
                process.kill()
                self._failed(f"it did not listen within {self._start_timeout:.0f} s")
            try:
                _, writer = await asyncio.open_unix_connection(str(self.socket_path))
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        self._ready = True
        self._failures = 0
        _LOGGER.info("Worker pid %s ready %.2f s after spawn", process.pid, time.monotonic() - started)

    def _failed(self, why: str) -> None:
        self._failures += 1
        delay = min(BACKOFF_FIRST * 2 ** (self._failures - 1), BACKOFF_MAX)
        self._retry_at = time.monotonic() + delay
        self._last_failure = why
        _LOGGER.error("Worker failed to start: %s; next attempt in %.0f s", why, delay)
        raise WorkerUnavailable(f"The worker process failed to start: {why}. Next attempt in {delay:.0f} s")

    async def _stop(self, reason: str) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        self._stopping = True
        _LOGGER.info("Stopping worker pid %s: %s", process.pid, reason)
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except asyncio.TimeoutError:
            _LOGGER.warning("Worker pid %s ignored SIGTERM for %.0f s; killing it", process.pid, STOP_GRACE)
            process.kill()
            await process.wait()

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if self.process is process:
            self._ready = False
        if self._stopping:
            _LOGGER.info("Worker pid %s exited with code %s", process.pid, code)
        else:
            _LOGGER.error("Worker pid %s died unexpectedly with code %s", process.pid, code)
