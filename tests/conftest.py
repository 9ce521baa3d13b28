"""Fixtures: tiny checkpoints built once per test session, and servers on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "wyoming-qwen-numba"))

ROOT = Path(__file__).resolve().parent.parent
# script/gpu-check runs the protocol tests on a GPU: WYOMING_QWEN_TEST_DEVICE=cuda (and a --dtype)
DEVICE_ARGS = [
    "--device",
    os.environ.get("WYOMING_QWEN_TEST_DEVICE", "cpu"),
    "--dtype",
    os.environ.get("WYOMING_QWEN_TEST_DTYPE", "auto"),
]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models  # noqa: E402
from wyoming_helpers import children, greedy_copy, start_server, tts_args, wait_until_listening  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Tiny checkpoints, built once. WYOMING_QWEN_TINY_DIR reuses a directory built earlier."""
    return tiny_models.prebuilt_or_build(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def asr_model_dir(tiny_dir) -> Path:
    return tiny_dir / "asr"


class RunningServer:
    def __init__(self, uri, app, server):
        self.uri = uri
        self.app = app
        self.server = server

    def client(self):
        from wyoming.client import AsyncClient

        return AsyncClient.from_uri(self.uri)


@pytest.fixture
async def start_asr(asr_model_dir, tmp_path):
    """Start an in-process ASR server on a unix socket: `await start_asr("--chunk-seconds", "0.5")`."""
    from wyoming_qwen_asr.app import create_app
    from wyoming_qwen_asr.options import parse_args

    started = []

    async def start(*extra, uri=None, preload=True) -> RunningServer:
        uri = uri or f"unix://{tmp_path}/asr-{len(started)}.sock"
        args = parse_args(["--uri", uri, "--model", str(asr_model_dir), *DEVICE_ARGS, *extra])
        app = create_app(args)
        if preload:
            await app.manager.preload(app.preload_key)
        server = await start_server(uri, app)
        running = RunningServer(uri, app, server)
        started.append(running)
        return running

    yield start
    await _stop_all(started)


async def _stop_all(started):
    for running in started:
        await running.server.stop()
        with contextlib.suppress(Exception):
            await running.app.manager.close()


@pytest.fixture
def greedy_tiny_dir(tiny_dir, tmp_path) -> Path:
    """The tiny TTS checkpoints decoding greedily: the same text gives the same audio."""
    out = tmp_path / "greedy-tiny"
    for name in ("tts-custom-voice", "tts-base", "tts-voice-design"):
        greedy_copy(tiny_dir / name, out / name)
    return out


@pytest.fixture
def voices_dir(tmp_path) -> Path:
    """A voices folder with one cloned voice (3 s of noise as its reference) and one designed voice."""
    import numpy as np
    import soundfile as sf

    folder = tmp_path / "voices"
    clone = folder / "grandma"
    clone.mkdir(parents=True)
    rng = np.random.default_rng(5)
    sf.write(clone / "reference.wav", (0.2 * rng.standard_normal(3 * 24000)).astype(np.float32), 24000)
    (clone / "reference.txt").write_text("Hello world. The quick brown fox.")
    design = folder / "narrator"
    design.mkdir()
    (design / "description.txt").write_text("A deep, calm male narrator.")
    (design / "language.txt").write_text("en")
    return folder


@pytest.fixture
async def start_tts(tiny_dir, tmp_path, voices_dir):
    """Start an in-process TTS server on a unix socket with the three tiny models and `voices_dir`."""
    from wyoming_qwen_tts.app import create_app
    from wyoming_qwen_tts.options import parse_args

    started = []

    async def start(*extra, uri=None) -> RunningServer:
        uri = uri or f"unix://{tmp_path}/tts-{len(started)}.sock"
        args = parse_args(["--uri", uri, *DEVICE_ARGS, *tts_args(tiny_dir, voices_dir, *extra)])
        app = create_app(args)
        server = await start_server(uri, app)
        running = RunningServer(uri, app, server)
        started.append(running)
        return running

    yield start
    await _stop_all(started)


class ServerProcess:
    """A server started as a real process (`python -m ...`), its log in a file."""

    def __init__(self, process, uri, log_path):
        self.process, self.uri, self.log_path = process, uri, log_path

    @property
    def pid(self):
        return self.process.pid

    def children(self):
        return children(self.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self):
        from wyoming.client import AsyncClient

        return AsyncClient.from_uri(self.uri)


@pytest.fixture
async def server_process(tmp_path):
    """Start `python -m MODULE ARGS...` on a unix socket (or the given --uri) and wait until it listens."""
    started = []

    async def start(module, *args, uri=None, env=None, cwd=ROOT, console_script=None, **popen):
        """console_script: start that installed command instead of `python -m module`; popen: more
        arguments for the process (user=, group=, preexec_fn=)."""
        uri = uri or f"unix://{tmp_path}/{module}-{len(started)}.sock"
        log_path = tmp_path / f"{module}-{len(started)}.log"
        log = open(log_path, "wb")
        command = (
            [str(Path(sys.executable).parent / console_script)] if console_script else [sys.executable, "-m", module]
        )
        process = await asyncio.create_subprocess_exec(
            *command,
            "--uri",
            uri,
            *DEVICE_ARGS,
            *args,
            stdout=log,
            stderr=log,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            **popen,
        )
        running = ServerProcess(process, uri, log_path)
        started.append(running)
        await wait_until_listening(process, uri, log_path, module, attempts=600)
        return running

    yield start
    for running in started:
        if running.process.returncode is None:
            running.process.terminate()
            try:
                await asyncio.wait_for(running.process.wait(), 20)
            except asyncio.TimeoutError:
                running.process.kill()
