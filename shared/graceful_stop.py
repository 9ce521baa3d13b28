"""Serving until SIGTERM, then a graceful stop: what `docker stop`, a container update and an add-on restart do.

On SIGTERM the listener closes at once (no new connections). A connection with a request under way (its
`in_request`, from the protocol's `ReplyTracker`: a reply being spoken, an utterance being streamed or
transcribed) may finish it within `--stop-grace` seconds; idle connections are closed at once, and so is
each busy one as soon as its request ends. Whatever is still under way when the grace runs out gets an
`error` (code `server-stopping`) before its connection closes, so a client never takes a cut reply for a
whole one. Then this returns and the process exits 0.

The gateway does this for its clients; its worker, stopped afterwards by the gateway, has no client left
and stops at once. With `--no-gateway` the server process does it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Awaitable, Callable, List, Optional

from wyoming.server import AsyncServer

_LOGGER = logging.getLogger(__name__)

STOP_GRACE = 10.0
STOPPING_CODE = "server-stopping"
POLL = 0.05


async def serve_until_stopped(
    server: AsyncServer,
    handler_factory: Callable,
    grace: float,
    new_tracker: Optional[Callable] = None,
    also_stop: Optional[Callable[[], Awaitable[None]]] = None,
) -> None:
    """Serve with `server` until SIGTERM, then stop as the module docstring says. `new_tracker` makes each
    connection's `ReplyTracker` (its `replies`), which says when a request is under way. `also_stop` stops
    another front at the same time (the HTTP API, whose requests get the same grace)."""
    if new_tracker is not None:
        make_handler = handler_factory

        def handler_factory(reader, writer):
            handler = make_handler(reader, writer)
            handler.replies = new_tracker()
            return handler

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = False
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread (tests)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        installed = True
    try:
        await server.start(handler_factory)
        await stop.wait()
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)
    if also_stop is None:
        await finish(server, grace)
    else:
        await asyncio.gather(finish(server, grace), also_stop())


async def finish(server: AsyncServer, grace: float) -> None:
    """Stop accepting, let requests under way finish within `grace` seconds, cut the rest short."""
    listener = getattr(server, "_server", None)  # wyoming's AsyncTcpServer and AsyncUnixServer keep it there
    if listener is not None:
        listener.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    busy = _busy(server)
    _LOGGER.info(
        "Stopping (SIGTERM): no new connections; %d request(s) under way get up to %.0f s (--stop-grace)",
        len(busy),
        grace,
    )
    closed: set = set()
    while True:
        for handler in _handlers(server):
            if not handler.in_request and id(handler) not in closed:
                closed.add(id(handler))
                await handler.stop()
        busy = _busy(server)
        if not busy or loop.time() >= deadline:
            break
        await asyncio.sleep(POLL)
    if busy:
        _LOGGER.warning("Cutting %d request(s) short after the %.0f s grace", len(busy), grace)
        text = (
            f"The server is stopping and this request could not finish within its {grace:g} s grace period "
            "(--stop-grace); it is incomplete. Try again once the server is back."
        )
        await asyncio.gather(*(handler.cut_short(text, STOPPING_CODE) for handler in busy))
    tasks = list(getattr(server, "_handlers", {}))
    if tasks:  # the read loops end once their connections are closed
        await asyncio.wait(tasks, timeout=2.0)
    _LOGGER.info("Stopped")


def _handlers(server: AsyncServer) -> List:
    return [handler for task, handler in list(getattr(server, "_handlers", {}).items()) if not task.done()]


def _busy(server: AsyncServer) -> List:
    return [handler for handler in _handlers(server) if getattr(handler, "in_request", False)]
