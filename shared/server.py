"""Serving in this process (`--no-gateway`, and every worker): the app's parts, and the listener.

An app is what one server process serves: a model manager, the `describe` answer and a handler per
connection. Each server builds its own app; the pieces that are the same for both are here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Callable, Optional, Protocol, TypeVar
from urllib.parse import urlparse

from wyoming.event import Event
from wyoming.server import AsyncEventHandler, AsyncServer

from .model_manager import ModelManager

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


class ServedApp(Protocol):
    manager: ModelManager
    preload_key: str  # the model `--preload` loads
    summary: str  # what is served, for the log
    write_timeout: float  # seconds a client may take to accept a reply

    def describe(self) -> Event: ...

    def handler(self, reader, writer) -> AsyncEventHandler: ...


def new_manager(args: argparse.Namespace) -> ModelManager:
    """A worker keeps its last model loaded: its gateway stops the whole worker when idle."""
    return ModelManager(max_loaded=args.max_loaded_models, keep_last_loaded=args.worker_of is not None)


def model_loader(model: str, args: argparse.Namespace, load_engine: Callable[..., T]) -> Callable[[], T]:
    """The loader the model manager runs (on its loader thread): find or download `model`, pick the
    device, dtype and quantization from the options, then `load_engine(path, device, dtype, quantize)`."""

    def load() -> T:
        from .devices import resolve_device, resolve_dtype
        from .model_store import resolve_model
        from .quantize import resolve_quantize

        path = resolve_model(model, args.data_dir, args.local_files_only)
        device = resolve_device(args.device)
        return load_engine(path, device, resolve_dtype(args.dtype, device), resolve_quantize(args.quantize, device))

    return load


def make_server(uri: str) -> AsyncServer:
    parsed = urlparse(uri)
    if parsed.scheme == "unix" and os.path.exists(parsed.path):
        os.unlink(parsed.path)  # a stale socket from an earlier run would make bind fail
    return AsyncServer.from_uri(uri)


async def serve_app(
    app: ServedApp, args: argparse.Namespace, new_tracker: Optional[Callable] = None, also_stop=None
) -> None:
    """Serve `app` until SIGTERM, then stop gracefully (`shared/graceful_stop.py`); `new_tracker` makes each
    connection's `ReplyTracker`, which says when a request is under way; `also_stop` stops the HTTP front."""
    from .graceful_stop import serve_until_stopped

    _LOGGER.info("Serving %s on %s", app.summary, args.uri)
    if args.preload:
        app.manager.preload_in_background(app.preload_key)
    server = make_server(args.uri)
    _LOGGER.info("Ready on %s", args.uri)
    await serve_until_stopped(server, app.handler, args.stop_grace, new_tracker, also_stop)
    await _inference_done(app, args.stop_grace)


async def _inference_done(app: ServedApp, within: float) -> None:
    """Wait for the job the inference thread runs (a cut request stops at its next step): model code still
    running while the interpreter exits aborts the process."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    app.manager.stop_background_work()  # packing steps would otherwise follow one another into the exit
    while (app.manager.inference.busy or app.manager.background_busy) and loop.time() < deadline:
        await asyncio.sleep(0.05)
