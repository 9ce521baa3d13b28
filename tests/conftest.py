"""Fixtures: tiny checkpoints built once per test session, and servers on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "wyoming-qwen-numba"))

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Tiny checkpoints, built once. WYOMING_QWEN_TINY_DIR reuses a directory built earlier."""
    prebuilt = os.environ.get("WYOMING_QWEN_TINY_DIR")
    if prebuilt and (Path(prebuilt) / "asr" / "config.json").exists():
        return Path(prebuilt)
    out = tmp_path_factory.mktemp("tiny-models")
    tiny_models.build_asr(out / "asr")
    return out


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
    from wyoming_qwen_asr.__main__ import parse_args
    from wyoming_qwen_asr.app import create_app
    from wyoming_qwen_asr.handler import AsrEventHandler
    from shared.server import make_server

    started = []

    async def start(*extra, uri=None, preload=True) -> RunningServer:
        uri = uri or f"unix://{tmp_path}/asr-{len(started)}.sock"
        args = parse_args(["--uri", uri, "--model", str(asr_model_dir), "--device", "cpu", *extra])
        app = create_app(args)
        if preload:
            await app.manager.preload(app.model_key)
        server = make_server(uri)
        await server.start(partial(AsrEventHandler, app=app))
        running = RunningServer(uri, app, server)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.server.stop()
        with contextlib.suppress(Exception):
            await running.app.manager.close()
