"""The HTTP front (`--http tcp://HOST:PORT`): OpenAI-compatible endpoints beside the Wyoming port.

One gateway, two fronts, one worker protocol. An HTTP request becomes a Wyoming conversation with the worker,
the same events a Home Assistant client sends, so it runs on the same worker, model manager, inference queue,
idle unload and memory hand-back, and keeps the worker alive for the other front as any request does
(`GatewayLink`). With `--no-gateway` the conversation is served in this process by the server's own handler
over a socket pair (`LocalLink`). Compressed audio is decoded and encoded in the worker
(shared/codec_events.py), so the gateway imports only Starlette and uvicorn, and only with `--http`: they add
about 7 MiB to the gateway, aiohttp's server 13.5 MiB (each measured as a running server that answered a
request, beside wyoming), which would take the gateway to its 40 MiB limit.

This module holds what both servers' APIs share: the worker links, the conversation, the errors in OpenAI's
JSON shape, the API key, `/health` and `/v1/models`. Each server adds its own routes (`ServerKind.http_api`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import logging
import socket
from typing import AsyncIterator, Callable, Iterable, List, Optional, Tuple
from urllib.parse import urlparse

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Info

_LOGGER = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 26 * 1024 * 1024  # a 25 MB file (OpenAI's limit) and its multipart wrapping


class ApiError(Exception):
    """A request that cannot be served, answered in OpenAI's error shape with `status`."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


# Wyoming error codes the worker sends, and the HTTP status of each: the client's mistakes are 4xx
WORKER_ERROR_STATUS = {
    "bad-audio": 400,
    "file-too-large": 413,
    "audio-format": 400,
    "unsupported-language": 400,
    "utterance-too-long": 400,
    "unknown-voice": 400,
    "bad-reference": 400,
    "text-too-long": 400,
    "protocol": 400,
    "malformed-event": 400,
    "timeout": 504,
    "worker-unavailable": 503,
    "worker-died": 503,
    "server-stopping": 503,
}


class WorkerError(ApiError):
    def __init__(self, error: Error) -> None:
        code = error.code or "error"
        super().__init__(WORKER_ERROR_STATUS.get(code, 500), error.text, code.replace("-", "_"))


# -- how a request reaches the worker --------------------------------------------------------------------


class GatewayLink:
    """Through the gateway's worker: counted as a user while open (so the idle stop waits), started if needed."""

    def __init__(self, gateway) -> None:
        self.gateway = gateway

    def running(self) -> bool:
        return self.gateway.supervisor.running

    async def open(self) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter, Callable[[], None]]:
        from .supervisor import WorkerUnavailable

        self.gateway.user_arrived()
        try:
            reader, writer = await self.gateway.supervisor.connect()
        except (WorkerUnavailable, OSError) as err:
            self.gateway.user_left()
            raise ApiError(503, f"The speech worker could not be started: {err}", "worker_unavailable") from err
        closed = False

        def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                writer.close()
                self.gateway.user_left()

        return reader, writer, close


class LocalLink:
    """`--no-gateway`: the server's own handler serves the conversation, in this process, over a socket pair."""

    def __init__(self, handler_factory: Callable) -> None:
        self.handler_factory = handler_factory
        self._tasks: set = set()

    def running(self) -> bool:
        return True

    async def open(self) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter, Callable[[], None]]:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        server_reader, server_writer = await asyncio.open_connection(sock=theirs)
        task = asyncio.create_task(self.handler_factory(server_reader, server_writer).run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return reader, writer, writer.close


class Conversation:
    """One Wyoming exchange with the worker: `send` events, `read` them back; an `error` from the worker
    raises WorkerError, silence for `timeout` seconds raises a 504."""

    def __init__(self, link, timeout: float) -> None:
        self.link, self.timeout = link, timeout
        self._close: Optional[Callable[[], None]] = None

    async def __aenter__(self) -> "Conversation":
        return await self.open()

    async def __aexit__(self, *_exc) -> None:
        self.close()

    async def open(self) -> "Conversation":
        self.reader, self.writer, self._close = await self.link.open()
        return self

    def close(self) -> None:
        """End the conversation (again: nothing); the worker stops what it did for it."""
        close, self._close = self._close, None
        if close is not None:
            close()

    async def send(self, event: Event) -> None:
        try:
            await async_write_event(event, self.writer)
        except (ConnectionError, OSError) as err:
            raise ApiError(503, "The speech worker went away; try again", "worker_died") from err

    async def read(self) -> Event:
        try:
            async with asyncio.timeout(self.timeout):
                event = await async_read_event(self.reader)
        except TimeoutError:
            raise ApiError(504, f"The server gave no answer for {self.timeout:.0f} s", "timeout") from None
        except (ConnectionError, OSError, EOFError):
            event = None
        if event is None:
            raise ApiError(503, "The speech worker stopped and this request was lost; try again", "worker_died")
        if Error.is_type(event.type):
            raise WorkerError(Error.from_event(event))
        return event


class StreamedBody:
    """An ASGI response whose body is sent piece by piece as `pieces` makes it. A client that leaves is
    noticed at once (uvicorn then drops what is sent: `http.disconnect` says it), and one that takes no bytes
    for `write_timeout` seconds is dropped, as on the Wyoming side; however it ends, `on_close` runs (closing
    the worker conversation stops the work done for it)."""

    def __init__(
        self, pieces: AsyncIterator[bytes], media_type: str, write_timeout: float, on_close: Callable[[], None]
    ) -> None:
        self.pieces, self.media_type, self.write_timeout, self.on_close = pieces, media_type, write_timeout, on_close

    async def __call__(self, scope, receive, send) -> None:
        streaming = asyncio.create_task(self._stream(send))
        left = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait({streaming, left}, return_when=asyncio.FIRST_COMPLETED)
            if not streaming.done():
                _LOGGER.info("An HTTP client left mid-reply; its work stopped")
                streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streaming
        finally:
            left.cancel()
            if not streaming.done():
                streaming.cancel()
            self.on_close()

    async def _stream(self, send) -> None:
        headers = [(b"content-type", self.media_type.encode()), (b"cache-control", b"no-cache")]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async for piece in self.pieces:
                if piece:
                    async with asyncio.timeout(self.write_timeout):
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except ApiError as err:  # the status is sent already: the body ends short, and the log says why
            _LOGGER.warning("An HTTP reply was cut short: %s", err.message)
        except TimeoutError:
            _LOGGER.warning("Dropping an HTTP client: it did not read for %.0f s", self.write_timeout)
        except OSError as err:
            _LOGGER.info("An HTTP client left mid-reply (%s); its work stopped", type(err).__name__)
        finally:
            with contextlib.suppress(Exception):
                await self.pieces.aclose()


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


# -- the app ---------------------------------------------------------------------------------------------


class HttpFront:
    """What the routes of both servers need: the worker link, the `describe` answer, the options."""

    def __init__(self, link, describe: Callable[[], Event], args, aliases: Iterable[str], served=()) -> None:
        self.link = link
        self.describe = describe
        self.args = args
        self.aliases = tuple(aliases)
        self.served_models = tuple(served)  # model ids `describe` does not list (the TTS models)

    def conversation(self) -> Conversation:
        return Conversation(self.link, self.args.request_timeout)

    def info(self) -> Info:
        return Info.from_event(self.describe())

    def model_ids(self) -> List[str]:
        """Every `model` value this server accepts: OpenAI's names, our program names and our model ids."""
        ids = list(self.aliases)
        info = self.info()
        for program in info.asr:
            ids.append(program.name)
            ids.extend(model.name for model in program.models)
        ids.extend(program.name for program in info.tts)
        ids.extend(self.served_models)
        return list(dict.fromkeys(ids))

    def check_model(self, model: Optional[str]) -> None:
        if model and model not in self.model_ids():
            raise ApiError(
                400,
                f"Unknown model {model!r}; this server accepts {', '.join(self.model_ids())} (all served by its "
                "loaded model)",
                "model_not_found",
                "model",
            )


def api_key_of(args) -> Optional[str]:
    """`--api-key`, or the first line of `--api-key-file` (QWEN_*_API_KEY_FILE, for Docker secrets)."""
    if getattr(args, "api_key", None):
        return args.api_key
    path = getattr(args, "api_key_file", None)
    if path:
        with open(path, encoding="utf-8") as key_file:
            return key_file.readline().strip() or None
    return None


class Guard:
    """The API key (every path but /health) and the request size, before a route reads anything."""

    def __init__(self, app, api_key: Optional[str], max_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and scope["path"] != "/health":
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].strip(), self.api_key):
                if scope["type"] == "websocket":  # refused before the handshake: HTTP 403
                    return await send({"type": "websocket.close", "code": 1008})
                error = ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key")
                return await error.response()(scope, receive, send)
        if scope["type"] == "http":
            too_large = ApiError(413, f"The request is over {self.max_bytes // (1024 * 1024)} MB", "too_large")
            if int(headers.get(b"content-length", b"0") or 0) > self.max_bytes:
                return await too_large.response()(scope, receive, send)
            received = 0

            async def counted():
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large
                return message

            return await self.app(scope, counted, send)
        return await self.app(scope, receive, send)


async def _api_error(_request, error: ApiError) -> JSONResponse:
    return error.response()


async def _http_error(_request, error: HTTPException) -> JSONResponse:
    code = str(error.detail).lower().replace(" ", "_")
    return ApiError(error.status_code, str(error.detail), code).response()


def build_app(front: HttpFront, http_api: str) -> Starlette:
    async def health(_request: Request) -> JSONResponse:
        # from the gateway: it never starts a worker
        return JSONResponse({"status": "ok", "worker": "running" if front.link.running() else "stopped"})

    async def models(_request: Request) -> JSONResponse:
        data = [{"id": i, "object": "model", "created": 0, "owned_by": "wyoming-qwen"} for i in front.model_ids()]
        return JSONResponse({"object": "list", "data": data})

    routes = [Route("/health", health), Route("/v1/models", models)]
    routes += importlib.import_module(http_api).routes(front)
    app = Starlette(routes=routes, exception_handlers={ApiError: _api_error, HTTPException: _http_error})
    return Guard(app, api_key_of(front.args))


class HttpServer:
    """The HTTP front, listening on `--http` (uvicorn, with its own signal handling off: the launcher's
    graceful stop stops it)."""

    def __init__(self, app, uri: str, stop_grace: float) -> None:
        import uvicorn

        parsed = urlparse(uri)
        if parsed.scheme != "tcp" or not parsed.port:
            raise ValueError(f"--http must be tcp://HOST:PORT, not {uri!r}")
        self.host, self.port = parsed.hostname or "0.0.0.0", parsed.port
        config = uvicorn.Config(
            app, host=self.host, port=self.port, http="h11", ws="wsproto", lifespan="off", access_log=False,
            log_config=None, timeout_graceful_shutdown=stop_grace, ws_max_size=4 * 1024 * 1024,
        )  # fmt: skip
        self.server = _uvicorn_server(config)
        self._task: Optional[asyncio.Task] = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():  # it could not listen: say why
                self._task.result()
                raise OSError(f"the HTTP API could not listen on {self.host}:{self.port}")
            await asyncio.sleep(0.01)
        _LOGGER.info("OpenAI-compatible HTTP API on http://%s:%s", self.host, self.port)

    async def stop(self) -> None:
        """No new connections; requests under way get the stop grace to finish (uvicorn's graceful shutdown)."""
        task, self._task = self._task, None
        if task is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await task


def _uvicorn_server(config):
    """uvicorn's server without its own signal handlers: SIGTERM belongs to the launcher (shared/graceful_stop.py)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield

    return Server(config)


async def start_http(kind, args, link, describe: Callable[[], Event]) -> Optional[HttpServer]:
    """`--http`: the front of this server kind over `link`; None without the option."""
    if not getattr(args, "http", None):
        return None
    api = importlib.import_module(kind.http_api)
    served = api.served_models(args) if hasattr(api, "served_models") else ()
    front = HttpFront(link, describe, args, api.OPENAI_MODELS, served)
    server = HttpServer(build_app(front, kind.http_api), args.http, args.stop_grace)
    await server.start()
    return server
