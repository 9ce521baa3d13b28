"""The worker process: started on demand, watched, stopped when idle or stuck.

The worker is the very same server run with `--no-gateway` on a private unix socket, started with
the interpreter (a fresh process, never a fork of one that may hold CUDA). Ending it is the only way
to hand back all memory: the model, torch's own few hundred MiB and the CUDA context.

The worker imports our packages from where the gateway found them, before anything else: a `shared/`
folder or a `shared.py` in the user's working directory (or on PYTHONPATH) would otherwise replace ours
in the worker only, so `describe` would work and every real request would fail.
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

from .background import BackgroundTasks
from .backoff import Backoff

_LOGGER = logging.getLogger(__name__)

STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL

# `python -c` puts the working directory first on sys.path: drop it, import our packages from the
# directory given (ahead of PYTHONPATH too), then take that directory out again so that every other
# import resolves as usual. Submodules are then found through the packages' own __path__.
_WORKER_BOOTSTRAP = """\
import runpy, sys
if sys.path and sys.path[0] in ('', '.'):
    del sys.path[0]
root, module = sys.argv.pop(1), sys.argv.pop(1)
sys.path.insert(0, root)
import shared, importlib
importlib.import_module(module)
sys.path.remove(root)
sys.argv[0] = module
runpy.run_module(module, run_name='__main__', alter_sys=True)
"""


def package_root() -> str:
    """The directory holding our packages, as this (the gateway's) process imported them."""
    return str(Path(__file__).resolve().parent.parent)


def worker_command(module: str, argv: List[str]) -> List[str]:
    return [sys.executable, "-c", _WORKER_BOOTSTRAP, package_root(), module, *argv]


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
        self._backoff = Backoff()  # start-up failures (a worker that exits before it listens)
        self._watchers = BackgroundTasks()
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

    async def send(self, event) -> Optional[str]:
        """Send the worker (started first if none runs) one event on a connection of its own, which is then
        closed; returns None, or why it could not be sent."""
        from wyoming.event import async_write_event

        try:
            _, writer = await self.connect()
        except (WorkerUnavailable, OSError) as err:
            return str(err)
        try:
            await async_write_event(event, writer)
            return None
        except (ConnectionError, OSError) as err:  # the worker went away; the next request starts a new one
            return f"the worker closed the connection ({err})"
        finally:
            writer.close()

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
        backoff = self._backoff
        if backoff.wait_left():
            raise WorkerUnavailable(
                f"The worker process failed to start {backoff.failures} time(s) ({backoff.last_error}); "
                f"the next attempt is in {backoff.wait_left():.0f} s"
            )
        self.socket_path.unlink(missing_ok=True)
        args = worker_command(
            self._module,
            [*self._argv, "--no-gateway", "--uri", f"unix://{self.socket_path}", "--worker-of", str(os.getpid())],
        )
        started = time.monotonic()
        self._stopping = False
        self._ready = False
        self.process = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL)
        self.spawns += 1
        process = self.process
        _LOGGER.info("Started worker pid %s", process.pid)
        self._watchers.spawn(self._watch(process), name=f"watch worker {process.pid}")
        while True:
            if process.returncode == -signal.SIGILL:
                from .cpu_check import sigill_explanation

                self._failed(sigill_explanation())
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
        self._backoff.succeeded()
        _LOGGER.info("Worker pid %s ready %.2f s after spawn", process.pid, time.monotonic() - started)

    def _failed(self, why: str) -> None:
        delay = self._backoff.failed(why)
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
