"""Lazy loading and idle unloading of models.

Models run on the one inference thread. They load on a loader thread of their own, so a download of
several GB for one model never holds up the others' inference, and the inference thread keeps showing
progress to the health probe meanwhile.

A server registers each model it may need under a key with a loader. The first request that uses a key
loads it; a key nobody has used for its idle time is unloaded and its memory given back. The manager
knows nothing of ASR or TTS: what a model is and how it is served stays with each server's engine.

Behind the gateway, the gateway alone decides when the last model goes: it stops the whole worker,
which is the only way to hand back torch's and CUDA's own memory too. A worker's manager therefore
keeps its last loaded model (`keep_last_loaded`) and unloads only the others on their own timers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, TypeVar

from .background import BackgroundTasks
from .backoff import Backoff
from .devices import free_accelerator_memory, trim_host_memory
from .inference import InferenceThread, Priority

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

TRIM_AFTER = 3.0  # seconds without a request before a new model settles and malloc's kept memory goes back


@dataclass
class _Slot:
    key: str
    loader: Callable[[], Any]
    idle_unload: float
    model: Any = None
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)
    loads: int = 0
    unloads: int = 0
    timer: Optional[asyncio.TimerHandle] = None
    backoff: Backoff = field(default_factory=Backoff)
    loading: Optional[asyncio.Future] = None  # the load in progress, which every caller awaits
    warm_after_load: bool = False
    warmed: bool = False
    in_standby: bool = False  # its weights are file pages out of memory (shared/standby.py) until next used
    settled: bool = False  # its weights were moved to file pages since it loaded (`settle` or standby)


class ModelUnavailable(RuntimeError):
    """The model failed to load and the back-off time has not passed yet."""


class ModelManager:
    """Loads models on first use and unloads them after `idle_unload` seconds without a user.

    idle_unload: -1 never unloads, 0 unloads as soon as the last user is done.
    max_loaded: at most this many models at once (0: no limit); the least recently used idle one goes.
    keep_last_loaded: idle timers never unload the only model still loaded (a worker behind the gateway).
    """

    def __init__(
        self, inference: Optional[InferenceThread] = None, max_loaded: int = 0, keep_last_loaded: bool = False
    ) -> None:
        self.inference = inference or InferenceThread()
        self.max_loaded = max_loaded
        self.keep_last_loaded = keep_last_loaded
        self._slots: Dict[str, _Slot] = {}
        self._loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model-load")
        self._tasks = BackgroundTasks()
        self._trim_timer: Optional[asyncio.TimerHandle] = None
        self._stopping = False  # `stop_background_work`: no more packing, settling or trimming
        self._background_jobs = 0  # such jobs queued or running on the inference thread

    def register(self, key: str, loader: Callable[[], Any], idle_unload: float, warm_after_load: bool = False) -> None:
        """warm_after_load: a load is not done until the model's `warm_up()` (one tiny inference, on the
        inference thread) has run. On CUDA the first inference of a process pays seconds of lazy
        initialisation (cuBLAS and cuDNN handles, kernel modules loaded on first use); a loaded model that
        has not paid them answers its first request late (the first streaming steps of an utterance)."""
        self._slots[key] = _Slot(key, loader, idle_unload, warm_after_load=warm_after_load)

    def is_loaded(self, key: str) -> bool:
        return self._slots[key].model is not None

    def loaded(self, key: str) -> Any:
        """The loaded model of `key`, or None (for inspection; run model code through `run`)."""
        return self._slots[key].model

    def loading(self) -> List[str]:
        """Keys of the models being loaded (or downloaded) right now."""
        return [key for key, slot in self._slots.items() if slot.loading is not None]

    def users(self, key: str) -> int:
        return self._slots[key].users

    def load_count(self, key: str) -> int:
        return self._slots[key].loads

    def unload_count(self, key: str) -> int:
        return self._slots[key].unloads

    @contextlib.asynccontextmanager
    async def use(self, key: str) -> AsyncIterator["ModelHandle"]:
        """Hold `key` for one request: it is not unloaded while held."""
        slot = self._slots[key]
        slot.users += 1
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None
        try:
            yield ModelHandle(self, key)
        finally:
            slot.users -= 1
            slot.last_used = time.monotonic()
            if slot.users == 0:
                self._schedule_idle_unload(slot)
            if not any(s.users for s in self._slots.values()):
                self._schedule_trim()

    async def run(self, key: str, fn: Callable[[Any], T], priority: Priority = Priority.REALTIME) -> T:
        """Run `fn(model)` on the inference thread, loading the model first if needed."""
        slot = self._slots[key]
        if slot.model is None:
            await self._load(slot)
        model = slot.model  # even if it is evicted before the job runs, this job keeps its model

        def job() -> T:
            slot.last_used = time.monotonic()
            if slot.in_standby:
                slot.in_standby = False
                _LOGGER.info("Model %s leaves standby: serving from file pages", slot.key)
            return fn(model)

        return await self.inference.run(job, priority)

    async def preload(self, key: str, warm: bool = False) -> None:
        """Load the model; warm: then run its `warm_up()` (one tiny inference: the first one of a process
        pays one-time costs, which a request should not)."""
        await self.run(key, lambda _model: None)
        if warm and not self._slots[key].warmed:
            started = time.monotonic()
            await self.run(key, lambda model: model.warm_up(), Priority.BULK)
            _LOGGER.info("Warmed up model %s in %.2f s", key, time.monotonic() - started)
        self._schedule_idle_unload(self._slots[key])

    def preload_in_background(self, key: str, warm: bool = False) -> "asyncio.Task":
        """`--preload` or a `warm-up` event: load while the server already answers; a failure is logged."""
        task = self._tasks.spawn(self.preload(key, warm))
        task.add_done_callback(_log_preload_failure)
        return task

    async def standby(self, reason: str) -> None:
        """Every loaded model nobody uses goes to standby: it stays loaded, its weights become file pages the
        kernel may reclaim (the engine's `standby()`, on the inference thread); the next request serves
        without loading anything."""
        for slot in self._slots.values():
            model = slot.model
            if model is None or slot.users > 0 or slot.in_standby or not hasattr(model, "standby"):
                continue
            started = time.monotonic()

            def enter(slot=slot, model=model) -> Optional[str]:
                if slot.users > 0 or slot.model is not model:
                    return None  # a request came first
                slot.in_standby = slot.settled = True
                return model.standby()

            summary = await self._background(enter)
            if summary is not None:
                took = time.monotonic() - started
                _LOGGER.info("Model %s in standby (%s): %s in %.2f s", slot.key, reason, summary, took)

    def standby_in_background(self, reason: str) -> "asyncio.Task":
        """The gateway's `standby` request; a failure is logged (the model keeps serving as it is)."""
        task = self._tasks.spawn(self.standby(reason))
        task.add_done_callback(_log_standby_failure)
        return task

    def in_standby(self, key: str) -> bool:
        return self._slots[key].in_standby

    async def unload(self, key: str, reason: str) -> None:
        slot = self._slots[key]
        await self.inference.run(lambda: self._unload(slot, reason), Priority.BULK)

    async def close(self) -> None:
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        for slot in self._slots.values():
            if slot.timer is not None:
                slot.timer.cancel()
            if slot.model is not None:
                await self.unload(slot.key, "shutting down")
        self.inference.close()
        self._loader.shutdown(wait=False, cancel_futures=True)

    async def _load(self, slot: _Slot) -> None:
        """Load `slot` on the loader thread; callers that come meanwhile wait for the same load."""
        if slot.loading is None:
            slot.loading = self._tasks.spawn(self._load_now(slot))
        await asyncio.shield(slot.loading)  # a caller that leaves does not cancel the others' load

    async def _load_now(self, slot: _Slot) -> None:
        try:
            backoff = slot.backoff
            if backoff.wait_left():
                raise ModelUnavailable(
                    f"Model {slot.key} is not available: loading it failed {backoff.failures} time(s), last with "
                    f"{backoff.last_error.rstrip('.')}; next attempt in {backoff.wait_left():.0f} s"
                )
            await self._make_room_for(slot)
            _LOGGER.info("Loading model %s", slot.key)
            now = time.monotonic()
            try:
                model = await asyncio.get_running_loop().run_in_executor(self._loader, slot.loader)
            except Exception as err:
                why = f"{type(err).__name__}: {err}"
                delay = backoff.failed(why)
                _LOGGER.error("Loading model %s failed (%s); next attempt in %.0f s", slot.key, why, delay)
                raise
            if slot.warm_after_load:
                warming = time.monotonic()
                await self.inference.run(model.warm_up, Priority.REALTIME)
                _LOGGER.info("Warmed up model %s in %.2f s", slot.key, time.monotonic() - warming)
            backoff.succeeded()
            slot.model = model
            slot.loads += 1
            slot.warmed = slot.warm_after_load
            _LOGGER.info("Loaded model %s in %.2f s", slot.key, time.monotonic() - now)
            if hasattr(model, "prepare_step"):
                self._tasks.spawn(self._prepare(slot, model))
        finally:
            slot.loading = None

    def stop_background_work(self) -> None:
        """The process is stopping: queue no more background jobs (packing, settling, trimming)."""
        self._stopping = True
        if self._trim_timer is not None:
            self._trim_timer.cancel()
            self._trim_timer = None

    @property
    def background_busy(self) -> bool:
        """A background job is queued or running on the inference thread."""
        return self._background_jobs > 0

    async def _background(self, fn: Callable[[], T]) -> Optional[T]:
        """`fn` as a low-priority job on the inference thread, unless the process is stopping (None)."""
        if self._stopping:
            return None
        self._background_jobs += 1
        try:
            return await self.inference.run(fn, Priority.BULK)
        finally:
            self._background_jobs -= 1

    async def _prepare(self, slot: _Slot, model: Any) -> None:
        """The model's kernel preparation after its load (fbgemm packing), one low-priority job a step, so
        requests are served first and between steps."""
        started = time.monotonic()
        while slot.model is model:
            if not await self._background(model.prepare_step):
                break
        if not any(s.users for s in self._slots.values()):
            self._schedule_trim()  # the model settles now that its kernels are ready (see `_trim`)
        packing = getattr(model, "packing", None)
        if packing is not None and packing.count and slot.model is model:
            _LOGGER.info(
                "Prepared the kernels of model %s in %.2f s (%d matrices packed for fbgemm in %.2f s)",
                slot.key,
                time.monotonic() - started,
                packing.count,
                packing.seconds,
            )

    async def _make_room_for(self, slot: _Slot) -> None:
        if self.max_loaded <= 0:
            return
        loaded = [s for s in self._slots.values() if s.model is not None and s is not slot]
        while len(loaded) >= self.max_loaded:
            idle = [s for s in loaded if s.users == 0] or loaded
            victim = min(idle, key=lambda s: s.last_used)
            why = f"--max-loaded-models {self.max_loaded} reached, {slot.key} needed"
            await self.inference.run(lambda v=victim, w=why: self._unload(v, w))
            loaded.remove(victim)

    # -- on the inference thread -------------------------------------------------------------

    def _unload(self, slot: _Slot, reason: str) -> None:
        if slot.model is None:
            return
        slot.model = None
        slot.warmed = False
        slot.in_standby = slot.settled = False
        slot.unloads += 1
        free_accelerator_memory()
        _LOGGER.info("Unloaded model %s (%s)", slot.key, reason)

    # -- on the event loop ---------------------------------------------------------------------

    def _schedule_trim(self) -> None:
        """TRIM_AFTER seconds after the last request ends, the memory malloc kept from the requests goes back
        (`trim_host_memory`: loaded and idle, the real 0.6B TTS holds 600 MiB less)."""
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        loop = asyncio.get_running_loop()
        self._trim_timer = loop.call_later(TRIM_AFTER, lambda: self._tasks.spawn(self._trim()))

    async def _trim(self) -> None:
        """Idle: a model loaded since the last time settles first (its `settle()`: the weights become file
        pages, so what no request reads, most of an embedding table, never comes back; its prepared kernels
        included, so only once their preparation is done), then malloc's kept memory goes back."""
        self._trim_timer = None
        for slot in self._slots.values():
            model = slot.model
            packing = getattr(model, "packing", None)
            if model is None or slot.settled or not hasattr(model, "settle") or not getattr(packing, "done", True):
                continue
            if slot.users > 0:
                return
            started = time.monotonic()

            def settle(slot=slot, model=model) -> Optional[str]:
                if slot.users > 0 or slot.model is not model or slot.settled:
                    return None
                slot.settled = True
                return model.settle()

            summary = await self._background(settle)
            if summary is not None:
                _LOGGER.info("Settled model %s: %s in %.2f s", slot.key, summary, time.monotonic() - started)
        if not any(s.users for s in self._slots.values()):
            await self._background(trim_host_memory)

    def _schedule_idle_unload(self, slot: _Slot) -> None:
        if slot.idle_unload < 0 or slot.users > 0:
            return
        loop = asyncio.get_running_loop()
        if slot.timer is not None:
            slot.timer.cancel()
        slot.timer = loop.call_later(max(slot.idle_unload, 0.0), lambda: self._tasks.spawn(self._unload_if_idle(slot)))

    async def _unload_if_idle(self, slot: _Slot) -> None:
        slot.timer = None
        if slot.users > 0 or slot.model is None:
            return
        idle_for = time.monotonic() - slot.last_used

        def unload() -> None:
            if slot.users > 0:
                return
            if self.keep_last_loaded and not any(s.model is not None for s in self._slots.values() if s is not slot):
                _LOGGER.debug("Keeping %s: the last loaded model goes with the worker", slot.key)
                return
            self._unload(slot, f"idle for {idle_for:.1f} s, --idle-unload {slot.idle_unload:g}")

        await self.inference.run(unload, Priority.BULK)


def _log_preload_failure(task: "asyncio.Task") -> None:
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("Preloading the model failed: %s", task.exception())


def _log_standby_failure(task: "asyncio.Task") -> None:
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("Standby failed: %s", task.exception())


@dataclass
class ModelHandle:
    """One request's hold on a model: run jobs with it on the inference thread."""

    manager: ModelManager
    key: str

    async def run(self, fn: Callable[[Any], T], priority: Priority = Priority.REALTIME) -> T:
        return await self.manager.run(self.key, fn, priority)
