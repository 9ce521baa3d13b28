"""Hostile frames, hostile clients and faults, against real server processes over real sockets.

Every case checks the outcome it should have and then that the same server still completes a real
request (a transcription or a synthesis, not only `describe`, which the gateway answers without a
worker). The frame limits are in shared/connection.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from test_gateway_process import alive, transcribe, wait_for
from wyoming.asr import Transcribe
from wyoming.audio import AudioStart
from wyoming.event import Event, async_read_event
from wyoming.info import Describe
from wyoming.ping import Ping
from wyoming.tts import Synthesize

from shared.connection import MAX_DATA_BYTES, MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES

from wyoming_helpers import read_until, rss_kib, send_audio, speechlike, tts_args

pytestmark = pytest.mark.asyncio


def frame(header: dict, data: bytes = b"", payload: bytes = b"") -> bytes:
    return json.dumps(header).encode() + b"\n" + data + payload


async def open_raw(uri: str) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if uri.startswith("unix://"):
        return await asyncio.open_unix_connection(uri[len("unix://") :])
    host, port = uri[len("tcp://") :].rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def exchange(uri: str, raw: bytes, *, half_close=False, listen=3.0) -> Tuple[List[Event], bool]:
    """Send raw bytes; return the events that came back and whether the server closed the connection."""
    reader, writer = await open_raw(uri)
    try:
        writer.write(raw)
        await writer.drain()
        if half_close:
            writer.write_eof()
    except ConnectionError:  # the server closed before taking it all: what it said is still readable
        pass
    events: List[Event] = []
    closed = False
    try:
        async with asyncio.timeout(listen):
            while True:
                event = await async_read_event(reader)
                if event is None:
                    closed = True
                    break
                events.append(event)
    except TimeoutError:
        pass
    except ConnectionError:
        closed = True
    writer.close()
    return events, closed


def error_code(events: List[Event]) -> Optional[str]:
    return next((e.data.get("code") for e in events if e.type == "error"), None)


HUGE = 10**12
# (case, bytes sent, expected error code or None, the server closes the connection)
BAD_FRAMES = [
    ("header is not JSON", b"hello there\n", "malformed-frame", True),
    ("header is a JSON list", b"[1, 2, 3]\n", "malformed-frame", True),
    ("header has no type", b'{"data": {}}\n', "malformed-frame", True),
    ("type is not a string", b'{"type": 5}\n', "malformed-frame", True),
    ("1 MB header, no newline", b'{"type": "' + b"a" * 1_000_000, "frame-too-large", True),
    (
        "header line over the limit",
        b'{"type": "ping", "x": "' + b"a" * MAX_HEADER_BYTES + b'"}\n',
        "frame-too-large",
        True,
    ),
    ("data_length 10^12", frame({"type": "transcribe", "data_length": HUGE}), "frame-too-large", True),
    (
        "data_length just over",
        frame({"type": "transcribe", "data_length": MAX_DATA_BYTES + 1}),
        "frame-too-large",
        True,
    ),
    ("payload_length 10^12", frame({"type": "audio-chunk", "payload_length": HUGE}), "frame-too-large", True),
    (
        "payload_length just over",
        frame({"type": "audio-chunk", "payload_length": MAX_PAYLOAD_BYTES + 1}),
        "frame-too-large",
        True,
    ),
    ("negative payload_length", frame({"type": "audio-chunk", "payload_length": -5}), "malformed-frame", True),
    ("payload_length a string", frame({"type": "audio-chunk", "payload_length": "9"}), "malformed-frame", True),
    ("data is a JSON list", frame({"type": "transcribe", "data_length": 3}, b"[1]"), "malformed-frame", True),
    ("data is not JSON", frame({"type": "transcribe", "data_length": 3}, b"{{{"), "malformed-frame", True),
    ("inline data not an object", b'{"type": "transcribe", "data": [1]}\n', "malformed-frame", True),
]


async def real_transcription(uri: str) -> None:
    from wyoming.client import AsyncClient

    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(1.0))
        events = await read_until(client, "transcript-stop", "error", timeout=180)
    assert events[-1].type == "transcript-stop", events[-1]


async def real_synthesis(uri: str) -> None:
    from wyoming.client import AsyncClient

    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Synthesize(text="Hi.").event())
        events = await read_until(client, "audio-stop", "error", timeout=180)
    assert events[-1].type == "audio-stop", events[-1]
    assert any(e.type == "audio-chunk" for e in events)


async def check_bad_frames(uri: str, real_request, cases=BAD_FRAMES) -> List[str]:
    failures = []
    for case, raw, code, closes in cases:
        events, closed = await exchange(uri, raw)
        if error_code(events) != code or closed != closes:
            failures.append(f"{case}: got {[(e.type, e.data) for e in events]}, closed={closed}")
        await real_request(uri)
    return failures


async def test_bad_frames_at_the_gateway_get_an_error_and_it_serves_on(server_process, asr_model_dir):
    server = await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir))
    assert await check_bad_frames(server.uri, real_transcription) == []
    assert rss_kib(server.pid) < 200_000  # nothing announced was buffered (10^12 bytes were announced)


async def test_bad_frames_at_a_worker_get_an_error_and_it_serves_on(server_process, tiny_dir, voices_dir):
    server = await server_process("wyoming_qwen_tts", *tts_args(tiny_dir, voices_dir, "--no-gateway"))
    # the same reader as the gateway's: one case of each kind is enough here
    cases = [
        c
        for c in BAD_FRAMES
        if c[0]
        in (
            "header is not JSON",
            "1 MB header, no newline",
            "data_length 10^12",
            "payload_length 10^12",
            "data is a JSON list",
        )
    ]
    assert len(cases) == 5 and await check_bad_frames(server.uri, real_synthesis, cases) == []


async def test_short_payload_then_close_and_unknown_events(server_process, asr_model_dir):
    server = await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir))
    # a payload shorter than announced, then the client closes: nothing to answer, nothing left behind
    start = AudioStart(rate=16000, width=2, channels=1).event()
    raw = frame({"type": "audio-start", "data": start.data}) + frame(
        {"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, "payload_length": 1000},
        payload=b"\0" * 10,
    )
    events, closed = await exchange(server.uri, raw, half_close=True, listen=60)  # (a worker starts first)
    assert events == [] and closed
    # an unknown event type is ignored; the same connection then completes a real request
    from wyoming.client import AsyncClient

    async with AsyncClient.from_uri(server.uri) as client:
        await client.write_event(Event(type="frobnicate", data={"x": 1}))
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(Event(type="select-program", data={"name": "x"}))
        await send_audio(client, speechlike(1.0))
        events = await read_until(client, "transcript-stop", "error", timeout=180)
        assert events[-1].type == "transcript-stop" and error_code(events) is None


async def test_ping_is_answered_without_starting_a_worker(server_process, asr_model_dir):
    server = await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir))
    from wyoming.client import AsyncClient

    async with AsyncClient.from_uri(server.uri) as client:
        await client.write_event(Ping(text="hi").event())
        (pong,) = await read_until(client, "pong", timeout=5)
        assert pong.data.get("text") == "hi"
    await asyncio.sleep(0.5)
    assert server.children() == []


async def test_a_start_slower_than_idle_unload_is_not_stopped_under_its_client(server_process, asr_model_dir):
    # --idle-unload 0: stop the worker the moment nobody uses it; a client waiting for the start is a user
    server = await server_process(
        "wyoming_qwen_asr", "--model", str(asr_model_dir), "--idle-unload", "0", "--idle-exit", "0"
    )
    assert (await transcribe(server))[-1].type == "transcript-stop"
    await wait_for(lambda: server.children() == [], timeout=20, what="the idle stop after the request")
    assert (await transcribe(server))[-1].type == "transcript-stop"


async def test_preload_arms_the_idle_timer(server_process, asr_model_dir):
    server = await server_process(
        "wyoming_qwen_asr", "--model", str(asr_model_dir), "--preload", "--idle-unload", "2", "--idle-exit", "0"
    )
    await wait_for(lambda: server.children() != [], timeout=20, what="the preloaded worker")
    await wait_for(lambda: server.children() == [], timeout=30, what="the idle stop without any client")
    assert "no connection for" in server.log()


async def test_after_a_worker_dies_the_rest_of_the_stream_starts_no_new_worker(server_process, asr_model_dir):
    server = await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir))
    from wyoming.client import AsyncClient

    async def keep_streaming(client) -> None:
        pcm = speechlike(5.0)
        with contextlib.suppress(ConnectionError, OSError):
            for i in range(0, len(pcm), 3200):
                await send_audio(client, pcm[i : i + 3200], stop=False)
                await asyncio.sleep(0.02)

    client = AsyncClient.from_uri(server.uri)
    await client.connect()
    try:
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(0.5), stop=False)
        await wait_for(lambda: "s after spawn" in server.log(), timeout=60, what="a ready worker")
        await asyncio.sleep(0.5)
        (worker,) = server.children()
        os.kill(worker, signal.SIGKILL)
        streaming = asyncio.create_task(keep_streaming(client))  # the client goes on, unaware
        events = []
        # a write that fails after the close is reported by the next read: both mean "closed"
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):
                while (event := await client.read_event()) is not None:
                    events.append(event)
        await streaming
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            await client.disconnect()  # the server closed it already
    assert [e.data.get("code") for e in events if e.type == "error"] == ["worker-died"], server.log()
    await asyncio.sleep(1.0)
    assert server.log().count("Started worker pid") == 1 and server.children() == []
    assert (await transcribe(server))[-1].type == "transcript-stop"


async def test_during_start_up_back_off_one_error_then_close(server_process, asr_model_dir, tmp_path):
    # a worker that cannot start: its Qwen package fails to import (the gateway never imports it)
    fake = tmp_path / "fake-packages" / "qwen_asr"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('qwen_asr is broken in this test')\n")
    server = await server_process(
        "wyoming_qwen_asr", "--model", str(asr_model_dir), env={"PYTHONPATH": str(fake.parent)}
    )
    first = await transcribe(server)
    assert first[-1].type == "error" and first[-1].data["code"] == "worker-unavailable"
    # during the back-off a whole utterance gets one error, not one per audio chunk, and is closed
    pcm = speechlike(1.0)
    raw = frame({"type": "transcribe", "data": Transcribe(language="en").event().data})
    raw += frame({"type": "audio-start", "data": AudioStart(rate=16000, width=2, channels=1).event().data})
    for i in range(0, len(pcm), 3200):
        raw += frame(
            {"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, "payload_length": 3200},
            payload=pcm[i : i + 3200],
        )
    raw += frame({"type": "audio-stop"})
    events, closed = await exchange(server.uri, raw)
    assert [e.data["code"] for e in events] == ["worker-unavailable"] and closed
    assert "next attempt" in events[0].data["text"]
    assert server.log().count("Started worker pid") == 1


async def test_a_client_silent_for_too_long_is_closed_and_the_worker_idles_out(server_process, asr_model_dir):
    server = await server_process(
        "wyoming_qwen_asr",
        "--model",
        str(asr_model_dir),
        "--request-timeout",
        "3",
        "--idle-unload",
        "1",
        "--idle-exit",
        "0",
    )
    from wyoming.client import AsyncClient

    async with AsyncClient.from_uri(server.uri) as idle:  # only describe: costs nothing, stays open
        await idle.write_event(Describe().event())
        await read_until(idle, "info", timeout=5)
        async with AsyncClient.from_uri(server.uri) as client:
            await client.write_event(Transcribe(language="en").event())
            await send_audio(client, speechlike(0.5), stop=False)
            started = time.monotonic()
            events = await read_until(client, "error", timeout=40)
            assert events[-1].data["code"] == "timeout" and "sent nothing" in events[-1].data["text"]
            assert await client.read_event() is None  # closed
            assert time.monotonic() - started < 30
        await wait_for(lambda: server.children() == [], timeout=20, what="the idle stop")
        await idle.write_event(Describe().event())
        assert (await read_until(idle, "info", timeout=5))[-1].type == "info"
    assert (await transcribe(server))[-1].type == "transcript-stop"


async def test_a_client_that_never_reads_is_dropped_and_its_synthesis_stops(server_process, tiny_dir, voices_dir):
    server = await server_process("wyoming_qwen_tts", *tts_args(tiny_dir, voices_dir, "--write-timeout", "2"))
    await real_synthesis(server.uri)  # the worker is up
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(server.uri[len("unix://") :])
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    text = "This reply is long and nobody will ever listen to it. " * 80
    writer.write(frame({"type": "synthesize", "data": Synthesize(text=text).event().data}))
    await writer.drain()
    await wait_for(lambda: "Dropping a client" in server.log(), timeout=60, what="the slow reader to be dropped")
    writer.close()
    started = time.monotonic()
    await real_synthesis(server.uri)
    assert time.monotonic() - started < 20  # the abandoned reply no longer holds the inference thread


async def test_a_frozen_worker_is_restarted_and_a_resumed_one_is_kept(server_process, tiny_dir, voices_dir):
    server = await server_process("wyoming_qwen_tts", *tts_args(tiny_dir, voices_dir, "--request-timeout", "6"))
    await real_synthesis(server.uri)
    (worker,) = server.children()
    # frozen, then resumed before the health check gives up: the request times out, the worker stays
    os.kill(worker, signal.SIGSTOP)
    from wyoming.client import AsyncClient

    try:
        async with AsyncClient.from_uri(server.uri) as client:
            await client.write_event(Synthesize(text="Yo?").event())
            events = await read_until(client, "error", timeout=30)
            assert events[-1].data["code"] == "timeout"
    finally:
        os.kill(worker, signal.SIGCONT)
    await wait_for(lambda: "answers again" in server.log(), timeout=20, what="the resumed worker to answer")
    assert server.children() == [worker]
    await real_synthesis(server.uri)
    # frozen for good: the request times out and the worker is killed
    os.kill(worker, signal.SIGSTOP)
    try:
        async with AsyncClient.from_uri(server.uri) as client:
            await client.write_event(Synthesize(text="Hello?").event())
            events = await read_until(client, "error", timeout=30)
            assert events[-1].data["code"] == "timeout"
        await wait_for(lambda: not alive(worker), timeout=30, what="the frozen worker to be killed")
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGCONT)
    assert "showed no progress" in server.log()
    await real_synthesis(server.uri)


async def test_a_missing_checkpoint_is_an_error_until_it_appears(server_process, tmp_path, asr_model_dir):
    model = tmp_path / "model-not-yet-there"
    server = await server_process("wyoming_qwen_asr", "--model", str(model))
    events = await transcribe(server)
    assert events[-1].type == "error" and "does not exist" in events[-1].data["text"]
    model.symlink_to(asr_model_dir, target_is_directory=True)
    await asyncio.sleep(10.5)  # the back-off after a failed load (shared/backoff.py)
    assert (await transcribe(server))[-1].type == "transcript-stop"


async def test_a_corrupt_checkpoint_is_an_error_and_a_repaired_one_loads(server_process, tmp_path, asr_model_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(asr_model_dir, model)
    weights = next(model.glob("*.safetensors"))
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 3])  # a download cut short
    server = await server_process("wyoming_qwen_asr", "--model", str(model))
    events = await transcribe(server)
    assert events[-1].type == "error" and events[-1].data["code"] == "transcription-failed"
    weights.write_bytes(good)
    await asyncio.sleep(10.5)
    assert (await transcribe(server))[-1].type == "transcript-stop"


async def test_a_download_directory_that_cannot_be_written_is_named(server_process, tmp_path):
    # a hub model not downloaded yet, and a --data-dir this process may not write into (as root,
    # which writes anywhere else, a sysfs path: mkdir there is refused even to root)
    data_dir = tmp_path / "read-only"
    data_dir.mkdir()
    data_dir.chmod(0o555)
    if os.getuid() == 0:
        data_dir = Path("/sys/wyoming-qwen-data")
    server = await server_process(
        "wyoming_qwen_asr",
        "--model",
        "Qwen/Qwen3-ASR-0.6B",
        "--data-dir",
        str(data_dir),
        "--no-gateway",
        env={"HF_HUB_OFFLINE": "0"},
    )
    events = await transcribe(server)
    assert events[-1].type == "error"
    assert "cannot write" in events[-1].data["text"] and "--data-dir" in events[-1].data["text"], events[-1].data
    assert str(data_dir) in events[-1].data["text"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_load_slower_than_the_request_timeout_is_waited_for(server_process, asr_model_dir):
    rig = Path(__file__).resolve().parent / "rigs" / "slow_load"
    server = await server_process(
        "wyoming_qwen_asr",
        "--model",
        str(asr_model_dir),
        "--request-timeout",
        "2",
        env={"PYTHONPATH": str(rig), "WYOMING_QWEN_RIG_LOAD_DELAY": "7"},
    )
    events = await transcribe(server)
    assert events[-1].type == "transcript-stop", events[-1]
    assert "the worker is still loading asr; waiting on" in server.log()
