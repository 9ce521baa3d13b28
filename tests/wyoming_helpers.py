"""Small helpers for talking to the servers with the `wyoming` client in tests and benchmarks."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event

ROOT = Path(__file__).resolve().parent.parent

# The tests' and benchmarks' "speech" is `speechlike` noise, which the speech-to-text server's voice-activity
# detector rightly takes for no speech at all (an empty transcript, no decode). So every ASR server they start
# decodes every sample (`--vad off`, here as the environment default its options read), unless it is given
# `--vad on`, as the tests and benchmark of the detector itself are (tests/test_asr_endpointing.py).
os.environ.setdefault("QWEN_ASR_VAD", "off")
# Many tests compare a server's replies with one another (the same audio alone and among others, greedy speech
# twice). A worker serves its first requests through int_mm while fbgemm's packing is under way, and the two
# kernels round differently, so these servers pack before serving (`--int8-packing load`, here as the
# environment default their options read); the tests of the background packing ask for it
# (tests/test_idle_tiers.py, tests/test_quantize.py).
for _server in ("ASR", "TTS"):
    os.environ.setdefault(f"QWEN_{_server}_INT8_PACKING", "load")


def speechlike(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> bytes:
    """Noise with a slowly varying envelope, as 16-bit PCM (channels interleaved)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    envelope = 0.05 + 0.4 * np.abs(np.sin(np.arange(n) / rate * 1.3))
    mono = envelope * rng.standard_normal(n)
    samples = np.repeat(mono[:, None], channels, axis=1) if channels > 1 else mono
    return (np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes()


def wav_bytes(pcm: bytes, rate: int = 16000) -> bytes:
    """16-bit mono PCM as the bytes of a WAV file."""
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def espeak(text: str, rate: int = 16000) -> bytes:
    """`text` spoken by espeak-ng (real speech, for the voice-activity detector), as 16-bit mono PCM at `rate`."""
    import wave

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en", "-w", str(path), text], check=True)
        with wave.open(str(path)) as wav:
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).astype(np.float64)
            source = wav.getframerate()
    times = np.arange(int(len(samples) * rate / source)) / rate
    return np.interp(times, np.arange(len(samples)) / source, samples).astype(np.int16).tobytes()


async def send_audio(
    client, pcm: bytes, rate=16000, width=2, channels=1, *, realtime=False, chunk_seconds=0.1, stop=True
) -> None:
    await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
    step = int(rate * chunk_seconds) * width * channels
    for i in range(0, len(pcm), step):
        await client.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i : i + step]).event())
        if realtime:
            await asyncio.sleep(chunk_seconds)
    if stop:
        await client.write_event(AudioStop().event())


async def read_until(client, *types: str, timeout: float = 60.0) -> List[Event]:
    """Read events until one of `types` (inclusive); fails on disconnect or timeout."""
    events: List[Event] = []
    async with asyncio.timeout(timeout):
        while True:
            event: Optional[Event] = await client.read_event()
            assert event is not None, f"server closed the connection; got {[e.type for e in events]}"
            events.append(event)
            if event.type in types:
                return events


async def start_server(uri: str, app):
    """Serve `app` on `uri` in this process (tests and benchmarks)."""
    from shared.server import make_server

    server = make_server(uri)
    await server.start(app.handler)
    return server


def tts_args(tiny_dir, voices_dir, *extra) -> List[str]:
    """TTS server options for the three tiny models and a voices folder."""
    models = {"--model": "tts-custom-voice", "--clone-model": "tts-base", "--design-model": "tts-voice-design"}
    options = [part for flag, name in models.items() for part in (flag, str(tiny_dir / name))]
    return [*options, "--voices-dir", str(voices_dir), *extra]


def greedy_copy(src: Path, dst: Path) -> Path:
    """A checkpoint whose generate defaults decode greedily (everything else linked to `src`)."""
    dst.mkdir(parents=True)
    for part in src.iterdir():
        if part.name != "generation_config.json":
            (dst / part.name).symlink_to(part)
    config = json.loads((src / "generation_config.json").read_text())
    config.update(do_sample=False, subtalker_dosample=False)
    (dst / "generation_config.json").write_text(json.dumps(config, indent=2))
    return dst


def scratch_dir(prefix: str) -> Path:
    """A temporary folder for a benchmark's checkpoints and logs, removed when the process exits: a
    real-shape checkpoint takes gigabytes, and a disk full of old ones fails the next run."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# -- server processes (tests and benchmarks) ----------------------------------------------------------


def rss_kib(pid: int) -> Optional[int]:
    """Resident memory of a process (VmRSS), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return None


def children(pid: int) -> List[int]:
    """A gateway's worker processes (its children)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


async def wait_until_listening(process, uri: str, log_path: Path, what: str, attempts: int = 1200) -> None:
    """Wait until a started server accepts connections on `uri`; RuntimeError (with its log's tail) when
    it exits first or does not listen within `attempts` tries 50 ms apart."""
    from wyoming.client import AsyncClient

    for _ in range(attempts):
        if process.returncode is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{tail}")
        try:
            client = AsyncClient.from_uri(uri)
            await client.connect()
            await client.disconnect()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {uri}; see {log_path}")


async def spawn_server(module: str, uri: str, log_path: Path, *args: str) -> "asyncio.subprocess.Process":
    """`python -m module --uri uri --device cpu *args` in the repository, its output in `log_path`, once it
    listens (the benchmarks' servers: bench/stuck_client.py, cold_start.py and soak.py)."""
    with open(log_path, "wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "--uri", uri, "--device", "cpu", *args,
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    await wait_until_listening(process, uri, log_path, module)
    return process


async def stop_server(process, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL when it has not ended after `timeout` seconds."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()


# -- clients that stop reading (tests/test_stuck_client.py, bench/stuck_client.py) -------------------------

READING = " ".join(f"This is sentence number {n} of a long reading." for n in range(95))  # < 5,000 chars


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def never_reading_client(port: int, event_type: str, data: dict, payloads=()) -> socket.socket:
    """Connect with a 4 KiB receive buffer, send one event (and audio events), and never read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    body = json.dumps(data).encode()
    sock.sendall(json.dumps({"type": event_type, "data_length": len(body)}).encode() + b"\n" + body)
    for payload in payloads:
        sock.sendall(payload)
    return sock


async def first_audio(uri: str, text: str = "Hello there.", timeout: float = 300) -> float:
    """Seconds from a one-shot `synthesize` to its first audio chunk (the reply is read to its end)."""
    from wyoming.client import AsyncClient
    from wyoming.tts import Synthesize

    async with AsyncClient.from_uri(uri) as client:
        started = time.monotonic()
        await client.write_event(Synthesize(text=text).event())
        await read_until(client, "audio-chunk", timeout=timeout)
        first = time.monotonic() - started
        await read_until(client, "audio-stop", timeout=timeout)
        return first


def audio_events(pcm: bytes) -> bytes:
    """audio-start, chunks and audio-stop as raw Wyoming frames."""
    frames = []

    def frame(event_type: str, data: dict, payload: bytes = b"") -> bytes:
        body = json.dumps(data).encode()
        header = {"type": event_type, "data_length": len(body)}
        if payload:
            header["payload_length"] = len(payload)
        return json.dumps(header).encode() + b"\n" + body + payload

    audio = {"rate": 16000, "width": 2, "channels": 1}
    frames.append(frame("audio-start", audio))
    for start in range(0, len(pcm), 3200):
        frames.append(frame("audio-chunk", audio, pcm[start : start + 3200]))
    frames.append(frame("audio-stop", {}))
    return b"".join(frames)
