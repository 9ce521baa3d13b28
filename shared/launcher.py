"""Process start-up shared by both servers: the gateway (default), or the server itself with `--no-gateway`.

With the gateway, the process the user starts stays light; the models live in a worker process that
it starts on demand and stops when idle. `--no-gateway` serves in this process, exactly as the worker
does, for debugging. A worker is the same program started by the gateway with `--no-gateway
--worker-of <gateway pid>`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, FrozenSet, List, Optional, Sequence

from wyoming.event import Event

from . import lean_imports
from .cli import setup_logging
from .zeroconf_advertiser import advertiser_from_args

if TYPE_CHECKING:
    from .gateway import ReplyTracker
    from .server import ServedApp

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerKind:
    """What the shared start-up, gateway and serving code need to know of one server."""

    package: str  # the package a worker runs ("wyoming_qwen_asr")
    heavy_package: str  # what a worker imports before it listens ("qwen_asr")
    parse_args: Callable[[Sequence[str]], argparse.Namespace]
    describer: Callable[[argparse.Namespace], Callable[[], Event]]  # torch-free: the gateway uses it
    create_app: Callable[[argparse.Namespace], "ServedApp"]  # loads no model
    reply_tracker: Callable[[], "ReplyTracker"]  # the gateway's view of this protocol
    warms_peers_on: FrozenSet[str] = frozenset()  # client events that send `warm-up` to each --warm-peer
    http_api: str = ""  # the module of this server's HTTP routes (`--http`; shared/http_front.py)

    @property
    def name(self) -> str:
        """ "asr" or "tts": log and default zeroconf names."""
        return self.package.rsplit("_", 1)[-1]


def main(kind: ServerKind, argv: Optional[List[str]] = None) -> None:
    """Console-script entry point of both servers."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = kind.parse_args(argv)
    setup_logging(args)
    from .cpu_threads import apply as apply_cpu_threads

    threads = apply_cpu_threads(args.threads, args.cpu_wait)
    os.environ["WYOMING_QWEN_INT8_KERNEL"] = args.int8_kernel  # read by shared.quantize, here and in a worker
    if args.worker_of is None:
        _LOGGER.debug("CPU compute: %d threads, %s wait", threads, args.cpu_wait)
    if args.worker_of is None:  # a worker's gateway has checked already
        from .cpu_check import check_cpu

        problem = check_cpu()
        if problem is not None:
            _LOGGER.error("%s", problem)
            sys.exit(1)
    try:
        asyncio.run(launch(kind, args, argv))
    except KeyboardInterrupt:
        pass


async def launch(kind: ServerKind, args: argparse.Namespace, argv: List[str]) -> None:
    advertiser = advertiser_from_args(args, kind.name) if args.worker_of is None else None
    if advertiser is not None:
        await advertiser.start()
    try:
        if args.no_gateway:
            await _serve_here(kind, args)
        else:
            await _serve_gateway(kind, args, argv)
    finally:
        if advertiser is not None:
            await advertiser.stop()


async def _serve_here(kind: ServerKind, args: argparse.Namespace) -> None:
    from .server import serve_app

    parent_watch = None
    if args.worker_of is not None:
        parent_watch = asyncio.create_task(_exit_with_parent(args.worker_of))
    # before listening: imported by the first connection instead, they would stall the event loop
    lean_imports.install()
    _import_heavy_modules(kind.heavy_package, f"{kind.package}.handler")
    app = kind.create_app(args)
    http = None
    if args.http and args.worker_of is None:  # a worker never serves HTTP: its gateway does
        from .http_front import LocalLink, start_http

        http = await start_http(kind, args, LocalLink(app.handler), app.describe)
    try:
        await serve_app(app, args, kind.reply_tracker, http.stop if http is not None else None)
    finally:
        if http is not None:
            await http.stop()  # again: nothing, unless serving failed
        if parent_watch is not None:
            parent_watch.cancel()


async def _serve_gateway(kind: ServerKind, args: argparse.Namespace, argv: List[str]) -> None:
    from .gateway import Gateway
    from .graceful_stop import serve_until_stopped
    from .server import make_server
    from .supervisor import WorkerSupervisor
    from .warm_up import PeerWarmer

    supervisor = WorkerSupervisor(kind.package, argv)
    gateway = Gateway(
        supervisor,
        kind.describer(args),
        args.idle_unload,
        args.request_timeout,
        kind.reply_tracker,
        args.write_timeout,
        PeerWarmer(getattr(args, "warm_peer", None) or [], kind.warms_peers_on),
        args.spare_worker,
        args.idle_exit,
    )
    server = make_server(args.uri)
    http = None
    if args.http:
        from .http_front import GatewayLink, start_http

        http = await start_http(kind, args, GatewayLink(gateway), gateway.describe)
    preload = asyncio.create_task(gateway.preload()) if args.preload else None
    if args.spare_worker and not args.preload:
        gateway.start_spare()
    _LOGGER.info("Gateway ready on %s (models load in a worker process on first use)", args.uri)
    try:
        also_stop = http.stop if http is not None else None
        await serve_until_stopped(server, gateway.handler_factory, args.stop_grace, kind.reply_tracker, also_stop)
    finally:
        if http is not None:
            await http.stop()  # again: nothing, unless serving failed
        if preload is not None:
            preload.cancel()
        await supervisor.stop("the gateway is shutting down")


def _import_heavy_modules(package: str, handler_module: str) -> None:
    """A worker imports torch and the Qwen package before it listens, and logs how long that took
    (the gateway logs spawn-to-ready; the model load is logged when it happens)."""
    started = time.monotonic()
    importlib.import_module("torch")
    torch_done = time.monotonic()
    importlib.import_module(package)
    importlib.import_module(handler_module)
    _LOGGER.info(
        "Worker imported torch in %.2f s and %s in %.2f s",
        torch_done - started,
        package,
        time.monotonic() - torch_done,
    )


async def _exit_with_parent(parent_pid: int) -> None:
    """A worker never outlives its gateway (even one killed with SIGKILL)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1.0)
    _LOGGER.warning("Gateway pid %s is gone; worker exiting", parent_pid)
    os._exit(0)
