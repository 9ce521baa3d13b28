"""Starting the Wyoming listener."""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import urlparse

from wyoming.server import AsyncServer, HandlerFactory

_LOGGER = logging.getLogger(__name__)


def make_server(uri: str) -> AsyncServer:
    parsed = urlparse(uri)
    if parsed.scheme == "unix" and os.path.exists(parsed.path):
        os.unlink(parsed.path)  # a stale socket from an earlier run would make bind fail
    return AsyncServer.from_uri(uri)


async def serve(uri: str, handler_factory: HandlerFactory) -> None:
    server = make_server(uri)
    _LOGGER.info("Ready on %s", uri)
    await server.run(handler_factory)


def start_preload(manager, key: str) -> "asyncio.Task":
    """Load a model in the background while the server already answers `describe`."""
    task = asyncio.create_task(manager.preload(key))
    task.add_done_callback(_log_preload_failure)
    return task


def _log_preload_failure(task: "asyncio.Task") -> None:
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.error("Preloading the model failed: %s", task.exception())


def run_until_interrupted(main) -> None:
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def import_heavy_modules(package: str) -> None:
    """A worker imports torch and the Qwen package before it listens, and logs how long that took
    (the gateway logs spawn-to-ready; the model load is logged when it happens)."""
    import importlib
    import time

    started = time.monotonic()
    importlib.import_module("torch")
    torch_done = time.monotonic()
    importlib.import_module(package)
    _LOGGER.info(
        "Worker imported torch in %.2f s and %s in %.2f s",
        torch_done - started, package, time.monotonic() - torch_done,
    )
