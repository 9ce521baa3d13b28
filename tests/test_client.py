"""`wyoming-qwen-client` as a real process against the real servers, and its error paths."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import wave
from pathlib import Path
from typing import NamedTuple

import pytest
from wyoming.asr import Transcript, TranscriptChunk, TranscriptStop
from wyoming.event import async_read_event, async_write_event
from wyoming.info import AsrModel, AsrProgram, Attribution, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from wyoming_helpers import read_until, speechlike

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parent.parent
CLIENT = [sys.executable, "-m", "shared.client"]


class Result(NamedTuple):
    code: int
    stdout: str
    stderr: str
    seconds: float


async def client(*args: str, timeout: float = 120) -> Result:
    """Run `python -m shared.client ARGS` without blocking the loop the in-process servers run in."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *CLIENT,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return Result(process.returncode, out.decode(), err.decode(), time.monotonic() - started)


def assert_failed_with(result: Result, *parts: str) -> str:
    """Exit status 1 and one error line, naming every part; no traceback."""
    assert result.code == 1, result
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert result.stderr.splitlines()[-1] == errors[0]
    for part in parts:
        assert part in errors[0], result.stderr
    return errors[0]


@pytest.fixture
def wire(monkeypatch):
    """Every event the servers received ("in") and sent ("out"), with its arrival time."""
    from shared.handler import ServerEventHandler

    log = []
    handle_event, write_event = ServerEventHandler.handle_event, ServerEventHandler.write_event

    async def handle_spy(self, event):
        log.append(("in", event, time.monotonic()))
        return await handle_event(self, event)

    async def write_spy(self, event):
        log.append(("out", event, time.monotonic()))
        return await write_event(self, event)

    monkeypatch.setattr(ServerEventHandler, "handle_event", handle_spy)
    monkeypatch.setattr(ServerEventHandler, "write_event", write_spy)
    return log


def events(wire, direction, kind):
    return [(event, at) for d, event, at in wire if d == direction and event.type == kind]


def write_wav(path: Path, seconds: float, rate=16000, channels=1) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(speechlike(seconds, rate=rate, channels=channels))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- describe -------------------------------------------------------------------------------------


async def test_describe_the_asr_server_process_over_tcp(server_process, asr_model_dir):
    uri = f"tcp://127.0.0.1:{free_port()}"
    await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir), uri=uri)
    result = await client("describe", "--uri", uri)
    assert result.code == 0, result
    assert "speech-to-text program qwen3-asr" in result.stdout
    assert "streaming transcripts: yes" in result.stdout
    (model_line,) = [line for line in result.stdout.splitlines() if line.strip().startswith("model ")]
    assert "30 languages" in model_line and all(f" {code}," in model_line for code in ("en", "de", "zh", "yue"))
    assert f"Connecting to {uri}" in result.stderr


async def test_describe_the_tts_server_lists_every_voice(start_tts):
    server = await start_tts()
    result = await client("describe", "--uri", server.uri)
    assert result.code == 0, result
    assert "text-to-speech program qwen3-tts" in result.stdout and "streaming synthesis: yes" in result.stdout
    voices = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("  voice ")}
    assert {"ryan", "vivian", "grandma", "narrator"} <= set(voices)
    assert "[en]" in voices["narrator"] and "calm male narrator" in voices["narrator"]
    assert "speech-to-text" not in result.stdout


async def test_a_reader_that_stops_early_gets_no_error(start_tts):
    """The images' health check is `wyoming-qwen-client describe ... | grep -q qwen3-tts`: grep exits at its
    match, and the client used to log `error: unexpected BrokenPipeError` for the rest of its output. Here the
    reader (`true`) has gone before the client writes a byte, so every run closes the pipe early."""
    server = await start_tts()
    command = " ".join(CLIENT) + f" describe --uri {server.uri} | true"
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", f"set -o pipefail; {command}", stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert "error" not in err.decode().lower(), err.decode()
    assert process.returncode == 0


# -- transcribe -----------------------------------------------------------------------------------


async def test_transcribe_fast_prints_what_the_server_sent(start_asr, wire, tmp_path):
    server = await start_asr("--chunk-seconds", "0.5")
    wav = write_wav(tmp_path / "stereo.wav", 1.2, rate=22050, channels=2)
    result = await client("transcribe", "--uri", server.uri, "--fast", "--language", "en", str(wav))
    assert result.code == 0, result
    (start, _), *_ = events(wire, "in", "audio-start")
    assert (start.data["rate"], start.data["width"], start.data["channels"]) == (22050, 2, 2)
    sent = b"".join(e.payload for e, _ in events(wire, "in", "audio-chunk"))
    assert sent == speechlike(1.2, rate=22050, channels=2)
    assert events(wire, "in", "transcribe")[0][0].data["language"] == "en"
    (final, _), *_ = events(wire, "out", "transcript")
    assert f"transcript: {final.data['text']}\n" in result.stdout
    assert f"language: {final.data['language']}\n" in result.stdout
    chunks = events(wire, "out", "transcript-chunk")
    assert chunks, "the server streams the text, the last piece at the latest"
    growing = ""
    for chunk, _ in chunks:
        growing += chunk.data["text"]
        assert f"partial: {growing}\n" in result.stdout
    assert result.stdout.index("partial: ") < result.stdout.index("transcript: ")
    assert float(result.stdout.split("latency: ")[1].split()[0]) >= 0
    assert "Sending 1.20 s of audio (22050 Hz, 16-bit, stereo) as fast as possible" in result.stderr


async def test_transcribe_in_real_time_paces_the_audio(start_asr, wire, tmp_path):
    server = await start_asr("--chunk-seconds", "0.5")
    wav = write_wav(tmp_path / "speech.wav", 1.5)
    result = await client("transcribe", "--uri", server.uri, str(wav))
    assert result.code == 0, result
    assert result.seconds >= 1.5
    (_, started), *_ = events(wire, "in", "audio-start")
    (_, stopped), *_ = events(wire, "in", "audio-stop")
    chunks = events(wire, "in", "audio-chunk")
    assert len(chunks) == 15 and stopped - started >= 1.4
    assert stopped - chunks[0][1] >= 1.3  # spread over the audio's duration, not sent in one burst
    (final, _), *_ = events(wire, "out", "transcript")
    assert f"transcript: {final.data['text']}\n" in result.stdout
    latency = float(result.stdout.split("latency: ")[1].split()[0])
    assert 0 <= latency < result.seconds - 1.5


async def test_partials_are_printed_as_they_arrive(tmp_path):
    """A scripted server holds the final transcript back until the client has shown the growing text."""
    shown = asyncio.Event()
    model = AsrModel(
        name="m", attribution=Attribution("a", ""), installed=True, description=None, version=None, languages=["en"]
    )
    program = AsrProgram(
        name="scripted",
        attribution=Attribution("a", ""),
        installed=True,
        description=None,
        version=None,
        models=[model],
        supports_transcript_streaming=True,
    )

    async def scripted(reader, writer):
        while (event := await async_read_event(reader)) is not None:
            if event.type == "describe":
                await async_write_event(Info(asr=[program]).event(), writer)
            elif event.type == "audio-start":
                for piece in ("Hel", "lo wor"):
                    await async_write_event(TranscriptChunk(text=piece).event(), writer)
            elif event.type == "audio-stop":
                await shown.wait()
                await async_write_event(Transcript(text="Hello world", language="en").event(), writer)
                await async_write_event(TranscriptStop().event(), writer)
        writer.close()

    path = tmp_path / "scripted.sock"
    server = await asyncio.start_unix_server(scripted, path=str(path))
    wav = str(write_wav(tmp_path / "a.wav", 0.3))
    process = await asyncio.create_subprocess_exec(
        *CLIENT, "transcribe", "--fast", "--uri", f"unix://{path}", wav, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    try:
        lines = [(await asyncio.wait_for(process.stdout.readline(), 30)).decode() for _ in range(2)]
        assert lines == ["partial: Hel\n", "partial: Hello wor\n"]
        shown.set()
        rest = (await asyncio.wait_for(process.stdout.read(), 30)).decode()
        assert await process.wait() == 0
    finally:
        server.close()
    assert rest.startswith("transcript: Hello world\nlanguage: en\nlatency: ")


# -- synthesize -----------------------------------------------------------------------------------


def read_back(path: Path):
    with wave.open(str(path), "rb") as wav:
        return wav.getframerate(), wav.getnchannels(), wav.getsampwidth(), wav.readframes(wav.getnframes())


def assert_timings(result: Result):
    first = float(result.stdout.split("time to first audio: ")[1].split()[0])
    factor = float(result.stdout.split("real-time factor: ")[1].split()[0])
    assert 0 < first < result.seconds and factor > 0
    assert "faster than real time" in result.stdout


async def test_synthesize_one_shot_writes_the_wav(start_tts, wire, tmp_path):
    server = await start_tts()
    out = tmp_path / "one.wav"
    result = await client("synthesize", "--uri", server.uri, "Hello there.", "--voice", "ryan", "-o", str(out))
    assert result.code == 0, result
    (request, _), *_ = events(wire, "in", "synthesize")
    assert request.data["text"] == "Hello there." and request.data["voice"]["name"] == "ryan"
    assert not events(wire, "in", "synthesize-start")
    rate, channels, width, frames = read_back(out)
    assert (rate, channels, width) == (24000, 1, 2) and len(frames) > 0
    assert frames == b"".join(e.payload for e, _ in events(wire, "out", "audio-chunk"))
    assert f"wrote {out}: {len(frames) / 48000:.2f} s of audio (24000 Hz, 16-bit, mono)" in result.stdout
    assert_timings(result)


async def test_synthesize_stream_sends_the_text_in_pieces(start_tts, wire, tmp_path):
    server = await start_tts()
    out = tmp_path / "stream.wav"
    text = "Hi there, how are you today? Fine."
    result = await client("synthesize", "--uri", server.uri, text, "--stream", "-o", str(out))
    assert result.code == 0, result
    received = [event.type for d, event, _ in wire if d == "in"]
    assert received[received.index("synthesize-start") :][-1] == "synthesize-stop"
    pieces = [e.data["text"] for e, _ in events(wire, "in", "synthesize-chunk")]
    assert len(pieces) >= 3 and "".join(pieces) == text
    assert events(wire, "out", "synthesize-stopped")
    rate, channels, width, frames = read_back(out)
    assert (rate, channels, width) == (24000, 1, 2) and len(frames) > 0
    assert frames == b"".join(e.payload for e, _ in events(wire, "out", "audio-chunk"))
    assert_timings(result)


# -- errors ---------------------------------------------------------------------------------------


async def test_nothing_listening_names_the_uri(tmp_path):
    uri = f"tcp://127.0.0.1:{free_port()}"
    line = assert_failed_with(await client("describe", "--uri", uri), uri, "connection refused")
    assert "server running" in line
    missing = f"unix://{tmp_path}/none.sock"
    assert_failed_with(await client("synthesize", "--uri", missing, "Hi.", "-o", str(tmp_path / "x.wav")), missing)


async def test_unknown_voice_shows_the_servers_error(start_tts, tmp_path):
    server = await start_tts()
    async with server.client() as direct:
        await direct.write_event(Synthesize(text="Hi.", voice=SynthesizeVoice(name="nobody")).event())
        expected = (await read_until(direct, "error"))[-1].data["text"]
    out = tmp_path / "x.wav"
    for stream in ([], ["--stream"]):
        result = await client("synthesize", "--uri", server.uri, "Hi.", "--voice", "nobody", "-o", str(out), *stream)
        assert_failed_with(result, expected, "unknown-voice")
    assert not out.exists()


async def test_unreadable_wav_fails_before_connecting(tmp_path):
    missing = tmp_path / "missing.wav"
    result = await client("transcribe", str(missing))
    assert_failed_with(result, str(missing), "No such file")
    assert "Connecting" not in result.stderr
    not_wav = tmp_path / "notes.wav"
    not_wav.write_text("not audio")
    assert_failed_with(await client("transcribe", str(not_wav)), str(not_wav))


async def test_transcribe_against_the_tts_server(start_tts, tmp_path):
    server = await start_tts()
    result = await client("transcribe", "--uri", server.uri, "--fast", str(write_wav(tmp_path / "a.wav", 0.3)))
    assert_failed_with(result, server.uri, "no speech-to-text (asr) program", "tts qwen3-tts")


async def test_unsupported_language_shows_the_servers_error(start_asr, tmp_path):
    server = await start_asr(preload=False)
    wav = str(write_wav(tmp_path / "a.wav", 0.5))
    result = await client("transcribe", "--uri", server.uri, "--language", "tlh", wav)
    assert_failed_with(result, "unsupported-language", "tlh")
    assert result.seconds < 5


async def test_server_that_hangs_or_hangs_up(tmp_path):
    async def silent(reader, writer):
        await reader.read()  # never answers

    async def rude(reader, writer):
        writer.close()

    for name, handler in (("silent", silent), ("rude", rude)):
        path = tmp_path / f"{name}.sock"
        server = await asyncio.start_unix_server(handler, path=str(path))
        try:
            result = await client("describe", "--uri", f"unix://{path}", "--timeout", "0.5")
        finally:
            server.close()
        expected = "timed out after 0.5 s" if name == "silent" else "closed the connection"
        assert_failed_with(result, expected, f"unix://{path}", "waiting for its description")
