"""Start-up shared by both servers: the gateway (default), or the server itself with `--no-gateway`.

With the gateway, the process the user starts stays light; the models live in a worker process that
it starts on demand and stops when idle. `--no-gateway` serves in this process, exactly as the worker
does, for debugging. A worker is the same program started by the gateway with `--no-gateway
--worker-of <gateway pid>`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from typing import Awaitable, Callable, List, Optional

from wyoming.event import Event

from .cli import setup_logging
from .server import import_heavy_modules, make_server, run_until_interrupted
from .zeroconf_advertiser import advertiser_from_args

_LOGGER = logging.getLogger(__name__)


@dataclass
class ServerKind:
    module: str  # the package run as `python -m`
    short_name: str  # "asr" or "tts": default zeroconf names
    heavy_package: str  # what a worker imports before it listens ("qwen_asr", "qwen_tts")
    describe: Callable[[argparse.Namespace], Callable[[], Event]]  # torch-free
    serve_here: Callable[[argparse.Namespace], Awaitable[None]]  # handlers and models in this process


def main(kind: "ServerKind", parse_args: Callable[[List[str]], argparse.Namespace],
         argv: Optional[List[str]] = None) -> None:
    """Console-script entry point of both servers."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    setup_logging(args)
    run_until_interrupted(lambda: launch(kind, args, argv))


async def launch(kind: ServerKind, args: argparse.Namespace, argv: List[str]) -> None:
    advertiser = advertiser_from_args(args, kind.short_name) if args.worker_of is None else None
    if advertiser is not None:
        await advertiser.start()
    try:
        if args.no_gateway:
            if args.worker_of is not None:
                asyncio.create_task(_exit_with_parent(args.worker_of))
                import_heavy_modules(kind.heavy_package)
            await kind.serve_here(args)
        else:
            await _serve_gateway(kind, args, argv)
    finally:
        if advertiser is not None:
            await advertiser.stop()


async def _serve_gateway(kind: ServerKind, args: argparse.Namespace, argv: List[str]) -> None:
    from .gateway import Gateway
    from .supervisor import WorkerSupervisor

    supervisor = WorkerSupervisor(kind.module, argv)
    gateway = Gateway(supervisor, kind.describe(args), args.idle_unload, args.request_timeout)
    server = make_server(args.uri)
    if args.preload:
        asyncio.create_task(supervisor.start())
    _LOGGER.info("Gateway ready on %s (models load in a worker process on first use)", args.uri)
    try:
        await server.run(gateway.handler_factory)
    finally:
        await supervisor.stop("the gateway is shutting down")


async def _exit_with_parent(parent_pid: int) -> None:
    """A worker never outlives its gateway (even one killed with SIGKILL)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1.0)
    _LOGGER.warning("Gateway pid %s is gone; worker exiting", parent_pid)
    os._exit(0)
