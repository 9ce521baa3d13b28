"""Starting the Wyoming listener."""

from __future__ import annotations

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
