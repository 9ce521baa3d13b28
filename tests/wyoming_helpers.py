"""Small helpers for talking to the servers with the `wyoming` client in tests and benchmarks."""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event


def speechlike(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> bytes:
    """Noise with a slowly varying envelope, as 16-bit PCM (channels interleaved)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    envelope = 0.05 + 0.4 * np.abs(np.sin(np.arange(n) / rate * 1.3))
    mono = envelope * rng.standard_normal(n)
    samples = np.repeat(mono[:, None], channels, axis=1) if channels > 1 else mono
    return (np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes()


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
