"""The OpenAI-compatible HTTP API (shared/http_front.py), in this process over real sockets, as `--no-gateway`
serves it: the official `openai` client for what its users do, raw requests for the WebSocket and the bad
cases. After each bad request the same server answers a real one. The gateway's side (the worker started on
demand, /health without a worker, mixed load, the idle stop) is in test_http_gateway.py."""

from __future__ import annotations

import asyncio
import io
import json
import time

import aiohttp
import av
import numpy as np
import pytest
from conftest import DEVICE_ARGS
from openai import AsyncOpenAI, BadRequestError
from wyoming.asr import Transcribe, Transcript

from shared.http_front import LocalLink, start_http

from wyoming_helpers import free_port, read_until, send_audio, speechlike, start_server, tts_args, wav_bytes

RATE = 16000


class Running:
    def __init__(self, uri, app, server, http, port):
        self.uri, self.app, self.server, self.http = uri, app, server, http
        self.base = f"http://127.0.0.1:{port}"

    def openai(self, key: str = "unused") -> AsyncOpenAI:
        return AsyncOpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=0, timeout=120)

    def client(self):
        from wyoming.client import AsyncClient

        return AsyncClient.from_uri(self.uri)


async def _start(kind, args, preload=True) -> Running:
    from importlib import import_module

    package = "wyoming_qwen_asr" if kind == "asr" else "wyoming_qwen_tts"
    server_kind = import_module(f"{package}.kind").KIND
    app = import_module(f"{package}.app").create_app(args)
    if preload:
        await app.manager.preload(app.preload_key)
    server = await start_server(args.uri, app)
    http = await start_http(server_kind, args, LocalLink(app.handler), app.describe)
    return Running(args.uri, app, server, http, int(args.http.rsplit(":", 1)[1]))


@pytest.fixture
async def http_server(asr_model_dir, tiny_dir, voices_dir, tmp_path):
    """`await http_server("asr", *options)`: a server with `--http` on a free port."""
    started = []

    async def start(kind, *extra, preload=True) -> Running:
        uri = f"unix://{tmp_path}/{kind}-{len(started)}.sock"
        http = ["--http", f"tcp://127.0.0.1:{free_port()}"]
        if kind == "asr":
            from wyoming_qwen_asr.options import parse_args

            args = parse_args(["--uri", uri, "--model", str(asr_model_dir), *DEVICE_ARGS, *http, *extra])
        else:
            from wyoming_qwen_tts.options import parse_args

            args = parse_args(["--uri", uri, *DEVICE_ARGS, *http, *tts_args(tiny_dir, voices_dir, *extra)])
        started.append(await _start(kind, args, preload))
        return started[-1]

    yield start
    for running in started:
        await running.http.stop()
        await running.server.stop()
        await running.app.manager.close()


def encoded(pcm: bytes, container: str, codec: str, rate: int = RATE) -> bytes:
    """`pcm` (16-bit mono) in another container and codec, written by PyAV as a user's file would be."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate if codec != "libopus" else 48000, layout="mono")
        samples = np.frombuffer(pcm, dtype=np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=stream.rate)
        for piece in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(piece):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


async def wyoming_transcript(running: Running, pcm: bytes) -> str:
    async with running.client() as client:
        await client.write_event(Transcribe().event())
        await send_audio(client, pcm)
        events = await read_until(client, "transcript-stop", "error", timeout=120)
    return next(Transcript.from_event(e).text for e in events if e.type == "transcript")


# -- speech-to-text ---------------------------------------------------------------------------------------


async def test_transcriptions_in_every_response_format_are_the_wyoming_transcript(http_server):
    running = await http_server("asr")
    pcm = speechlike(2.0)
    expected = await wyoming_transcript(running, pcm)
    assert expected
    openai = running.openai()
    upload = ("command.wav", wav_bytes(pcm), "audio/wav")
    as_json = await openai.audio.transcriptions.create(model="whisper-1", file=upload)
    assert as_json.text == expected
    text = await openai.audio.transcriptions.create(model="qwen3-asr", file=upload, response_format="text")
    assert text.strip() == expected
    verbose = await openai.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=upload, response_format="verbose_json"
    )
    assert verbose.text == expected and verbose.duration == pytest.approx(2.0, abs=0.01)
    srt = await openai.audio.transcriptions.create(model="whisper-1", file=upload, response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,000\n") and expected in srt
    vtt = await openai.audio.transcriptions.create(model="whisper-1", file=upload, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n") and expected in vtt


@pytest.mark.parametrize(
    "container, codec, lossless",
    [
        ("flac", "flac", True),
        ("ogg", "libopus", False),
        ("mp3", "libmp3lame", False),
        ("webm", "libopus", False),
        ("mp4", "aac", False),
    ],
    ids=["flac", "ogg-opus", "mp3", "webm", "m4a"],
)
async def test_every_upload_format_is_decoded(http_server, container, codec, lossless):
    running = await http_server("asr")
    pcm = speechlike(1.5, seed=3)
    data = encoded(pcm, container, codec)
    result = await running.openai().audio.transcriptions.create(model="whisper-1", file=(f"a.{container}", data))
    assert result.text
    if lossless:  # the same samples: the same transcript as the WAV
        assert result.text == await wyoming_transcript(running, pcm)


async def test_a_streamed_transcription_sends_deltas_then_done(http_server):
    running = await http_server("asr", "--chunk-seconds", "0.5")
    pcm = speechlike(3.0, seed=1)
    expected = await wyoming_transcript(running, pcm)
    events = []
    stream = await running.openai().audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", wav_bytes(pcm)), stream=True
    )
    async for event in stream:
        events.append(event)
    kinds = [event.type for event in events]
    assert kinds[-1] == "transcript.text.done" and kinds.count("transcript.text.done") == 1
    assert "transcript.text.delta" in kinds
    assert "".join(event.delta for event in events[:-1]) == events[-1].text == expected


async def test_the_prompt_becomes_the_context(http_server, monkeypatch):
    running = await http_server("asr")
    seen = []
    engine = running.app.manager.loaded(running.app.model_key)
    original = engine.prompt
    monkeypatch.setattr(engine, "prompt", lambda context, *a, **k: seen.append(context) or original(context, *a, **k))
    await running.openai().audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav_bytes(speechlike(1.0))), prompt="Names: Kowalski"
    )
    assert seen and all("Names: Kowalski" in context for context in seen)


async def test_live_websocket_gives_partials_and_the_final_transcript(http_server):
    """Streamed at about real time, the final transcript extends the partials sent before it (streaming
    decodes with their text as a prefix, so it need not equal a one-piece decode of the same audio)."""
    running = await http_server("asr", "--chunk-seconds", "0.5")
    pcm = speechlike(2.0, seed=2)
    messages = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{running.base}/v1/audio/transcriptions/live") as ws:
            await ws.send_json({"rate": RATE, "width": 2, "channels": 1, "language": "en"})
            step = RATE // 5 * 2
            for start in range(0, len(pcm), step):
                await ws.send_bytes(pcm[start : start + step])
                await asyncio.sleep(0.02)
            await ws.send_json({"type": "stop"})
            async for message in ws:
                messages.append(json.loads(message.data))
    assert messages[-1]["type"] == "transcript.text.done" and messages[-1]["text"]
    deltas = [m["delta"] for m in messages if m["type"] == "transcript.text.delta"]
    assert len(deltas) >= 1 and "".join(deltas) == messages[-1]["text"]


async def test_bad_uploads_get_openai_errors_and_the_server_keeps_serving(http_server):
    running = await http_server("asr")
    url = f"{running.base}/v1/audio/transcriptions"
    cases = {
        "missing file": (None, 400, "missing_file"),
        "empty file": (b"", 400, "empty_file"),
        "not audio": (b"this is not audio at all " * 40, 400, "bad_audio"),
        "30 MB": (b"\0" * (30 * 1024 * 1024), 413, "too_large"),
    }
    async with aiohttp.ClientSession() as session:
        for name, (content, status, code) in cases.items():
            form = aiohttp.FormData()
            form.add_field("model", "whisper-1")
            if content is not None:
                form.add_field("file", content, filename="x.wav", content_type="audio/wav")
            async with session.post(url, data=form) as response:
                body = await response.json()
                assert response.status == status, (name, body)
                assert body["error"]["code"] == code and body["error"]["message"], (name, body)
        form = aiohttp.FormData()
        form.add_field("model", "no-such-model")
        form.add_field("file", wav_bytes(speechlike(0.5)), filename="x.wav")
        async with session.post(url, data=form) as response:
            assert response.status == 400 and "whisper-1" in (await response.json())["error"]["message"]
    result = await running.openai().audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav_bytes(speechlike(1.0)))
    )
    assert result.text


# -- text-to-speech ---------------------------------------------------------------------------------------


def seeded(seed: int = 5) -> None:
    """The same sampled speech for the same request: the server runs in this process, one request at a time."""
    import torch

    torch.manual_seed(seed)


def pcm_of(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
    return np.concatenate(frames)


async def test_speech_in_every_format(http_server):
    import torch

    from wyoming_qwen_tts.engine import FRAME_SAMPLES, max_frames_for

    running = await http_server("tts")
    openai = running.openai()
    text = "Hello there."
    # random weights run to the cap, unless they sample the end token by chance (a few percent of replies);
    # seeded, the replies are the same whichever tests ran before in this process
    torch.manual_seed(0)
    samples = max_frames_for(text) * FRAME_SAMPLES
    pcm = await (
        await openai.audio.speech.create(model="tts-1", voice="echo", input=text, response_format="pcm")
    ).aread()
    assert len(pcm) == 2 * samples
    wav = await (
        await openai.audio.speech.create(model="tts-1", voice="ryan", input=text, response_format="wav")
    ).aread()
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt " and len(wav) == 44 + 2 * samples
    for response_format in ("flac", "mp3", "opus"):
        audio = await (
            await openai.audio.speech.create(
                model="gpt-4o-mini-tts", voice="echo", input=text, response_format=response_format
            )
        ).aread()
        decoded = pcm_of(audio)
        assert abs(len(decoded) - samples * (48000 if response_format == "opus" else 24000) / 24000) < 0.05 * samples, (
            response_format
        )
    seeded()
    pcm = await (
        await openai.audio.speech.create(model="tts-1", voice="echo", input=text, response_format="pcm")
    ).aread()
    seeded()
    flac = pcm_of(
        await (
            await openai.audio.speech.create(model="tts-1", voice="echo", input=text, response_format="flac")
        ).aread()
    )
    assert np.array_equal(flac, np.frombuffer(pcm, dtype=np.int16))  # lossless: the same samples


async def test_speech_streams_its_first_bytes_before_the_last(http_server):
    running = await http_server("tts")
    text = "The first sentence is here. The second one follows it. And a third one ends it."
    arrivals = []
    async with running.openai().audio.speech.with_streaming_response.create(
        model="tts-1", voice="echo", input=text, response_format="pcm"
    ) as response:
        async for piece in response.iter_bytes():
            arrivals.append((time.monotonic(), len(piece)))
    assert len(arrivals) > 3
    first, last = arrivals[0][0], arrivals[-1][0]
    assert last - first > 0.2, arrivals  # bytes went out while later sentences were generated


async def test_speech_as_server_sent_events(http_server):
    import base64

    running = await http_server("tts")
    body = {"model": "tts-1", "voice": "echo", "input": "Hello there.", "response_format": "pcm"}
    async with aiohttp.ClientSession() as session:
        seeded()
        async with session.post(f"{running.base}/v1/audio/speech", json=body) as response:
            plain = await response.read()
        seeded()
        async with session.post(f"{running.base}/v1/audio/speech", json={**body, "stream_format": "sse"}) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = [
                json.loads(line[6:]) for line in (await response.text()).splitlines() if line.startswith("data: ")
            ]
    assert events[-1]["type"] == "speech.audio.done"
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == plain


async def test_voices_list_ours_and_the_openai_names(http_server):
    running = await http_server("tts")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{running.base}/v1/audio/voices") as response:
            listing = await response.json()
    names = {voice["name"] for voice in listing["voices"]}
    assert {"ryan", "grandma", "narrator"} <= names
    assert listing["openai_voices"]["echo"] == "ryan" and set(listing["openai_voices"].values()) <= names


async def test_bad_speech_requests_get_openai_errors_and_the_server_keeps_serving(http_server):
    running = await http_server("tts")
    openai = running.openai()
    cases = [
        (dict(voice="nobody", input="Hi."), "nobody"),
        (dict(voice="echo", input="Hi.", response_format="aac"), "response_format"),
        (dict(voice="echo", input=""), "input"),
        (dict(voice="echo", input="word " * 20_000), "5000 characters"),
        (dict(voice="echo", input="Hi.", speed=2.0), "speed"),
    ]
    for kwargs, mentioned in cases:
        with pytest.raises(BadRequestError) as raised:
            await openai.audio.speech.create(model="tts-1", **kwargs)
        assert mentioned in raised.value.message, raised.value.message
    audio = await (
        await openai.audio.speech.create(model="tts-1", voice="echo", input="Hi.", response_format="pcm")
    ).aread()
    assert len(audio) > 0


async def test_a_client_that_leaves_mid_stream_stops_its_generation(http_server):
    from wyoming_qwen_tts.engine import max_frames_for

    running = await http_server("tts")
    engine = running.app.manager.loaded("custom-voice")
    text = "This sentence is long enough to take many frames to speak it all."
    before = engine.frames_generated
    async with aiohttp.ClientSession() as session:
        body = {"model": "tts-1", "voice": "echo", "input": text, "response_format": "pcm"}
        async with session.post(f"{running.base}/v1/audio/speech", json=body) as response:
            await response.content.read(4096)  # the first audio, then leave
    await asyncio.sleep(2.0)
    generated = engine.frames_generated - before
    await asyncio.sleep(1.0)
    assert engine.frames_generated - before == generated  # it stopped
    assert generated < max_frames_for(text)
    audio = await (
        await running.openai().audio.speech.create(model="tts-1", voice="echo", input="Hi.", response_format="pcm")
    ).aread()
    assert audio


async def test_a_client_that_stops_reading_is_dropped_and_its_generation_stops(http_server):
    import socket

    from wyoming_helpers import READING

    running = await http_server("tts", "--write-timeout", "2")
    engine = running.app.manager.loaded("custom-voice")
    port = int(running.base.rsplit(":", 1)[1])
    body = json.dumps({"model": "tts-1", "voice": "echo", "input": READING, "response_format": "pcm"}).encode()
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", port))
    stuck.sendall(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        frames = -1
        for _ in range(120):  # generation runs until the buffers fill, then stops within the write timeout
            await asyncio.sleep(0.5)
            if engine.frames_generated == frames:
                break
            frames = engine.frames_generated
        await asyncio.sleep(1.0)
        assert engine.frames_generated == frames > 0  # stopped, long before the reading's end

        def read_to_the_end() -> None:  # the server closed the connection: the rest reads to EOF, not forever
            stuck.settimeout(10)
            while stuck.recv(65536):
                pass

        await asyncio.to_thread(read_to_the_end)
        seeded()
        audio = await (
            await running.openai().audio.speech.create(model="tts-1", voice="echo", input="Hi.", response_format="pcm")
        ).aread()
        assert audio
    finally:
        stuck.close()


# -- both ------------------------------------------------------------------------------------------------


async def test_models_health_and_the_api_key(http_server, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    running = await http_server("asr", "--api-key-file", str(key_file))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{running.base}/health") as response:  # no key needed
            assert response.status == 200 and (await response.json())["status"] == "ok"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            async with session.get(f"{running.base}/v1/models", headers=headers) as response:
                assert response.status == 401
                assert (await response.json())["error"]["code"] == "invalid_api_key"
    models = await running.openai("s3cret").models.list()
    ids = [model.id for model in models.data]
    assert {"whisper-1", "gpt-4o-transcribe", "qwen3-asr"} <= set(ids)
    with pytest.raises(Exception) as raised:
        await running.openai("wrong").audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav_bytes(speechlike(0.5)))
        )
    assert getattr(raised.value, "status_code", None) == 401
