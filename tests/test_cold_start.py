"""Cold start: what a worker imports, when it starts, and `--warm-peer` (real processes, real sockets)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
import torch
from test_gateway_process import wait_for
from wyoming.asr import Transcribe
from wyoming.audio import AudioStart
from wyoming.event import Event
from wyoming.server import AsyncEventHandler, AsyncServer

from shared.warm_up import WarmUp, send_warm_up

from wyoming_helpers import read_until, send_audio, speechlike, tts_args

UNUSED = ("nagisa", "sklearn", "pandas", "gradio", "flask")

WORKER_IMPORTS = """
import sys
from shared import lean_imports
from shared.launcher import _import_heavy_modules
if sys.argv[1] == "lean":
    lean_imports.install()
_import_heavy_modules("qwen_asr", "wyoming_qwen_asr.handler")
_import_heavy_modules("qwen_tts", "wyoming_qwen_tts.handler")
import transformers.generation.utils  # what generate imports when it first runs
real = [name for name in {unused!r} if getattr(sys.modules.get(name), "__file__", None)]
print("imported:", *real)
"""


def imported_by_a_worker(mode: str) -> set:
    script = WORKER_IMPORTS.format(unused=UNUSED)
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=300, check=True)
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("imported:")]  # qwen-tts prints too
    return set(line.split()[1:])


def test_a_worker_imports_nothing_it_never_uses():
    """As a worker starts (shared.launcher), neither the forced aligner's nagisa nor scikit-learn and pandas
    (through transformers' assisted generation) are imported, and no demo's gradio or flask; without the
    lean imports, the same imports pull nagisa and scikit-learn in (so this test can fail)."""
    assert imported_by_a_worker("lean") == set()
    assert {"nagisa", "sklearn"} <= imported_by_a_worker("stock")


def test_a_deferred_module_still_loads_when_used():
    script = (
        "import sys\nfrom shared import lean_imports\nlean_imports.install()\n"
        "import nagisa\nassert not hasattr(nagisa, '__file__')\n"
        "print(callable(nagisa.tagging), sys.modules['nagisa'].__file__.endswith('__init__.py'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["True", "True"]


@pytest.mark.asyncio
async def test_the_asr_worker_starts_on_transcribe(server_process, asr_model_dir):
    """The first event of a Home Assistant request is `transcribe`: the worker starts then, not at audio."""
    server = await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir))
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        deadline = time.monotonic() + 10
        while not server.children() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert server.children(), "no worker was started by transcribe"
        await send_audio(client, speechlike(1.0))
        assert (await read_until(client, "transcript-stop", "error", timeout=180))[-1].type == "transcript-stop"


@pytest.mark.asyncio
async def test_warm_peer_loads_the_tts_model_while_the_user_speaks(server_process, asr_model_dir, tiny_dir, voices_dir):
    tts = await server_process("wyoming_qwen_tts", *tts_args(tiny_dir, voices_dir), "--idle-unload", "60")
    asr = await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir), "--warm-peer", tts.uri)
    assert tts.children() == []
    async with asr.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        deadline = time.monotonic() + 120
        while "Warmed up model custom-voice" not in tts.log() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    assert len(tts.children()) == 1, "the TTS gateway started no worker"
    assert "Qwen3-TTS custom_voice" in tts.log(), "the TTS worker did not load its model"
    assert "Warmed up model custom-voice" in tts.log(), "the TTS worker did not run its warm-up inference"


class Recorder(AsyncEventHandler):
    """Another Wyoming server: it ignores what it does not know, as wyoming-piper does."""

    seen: list = []

    async def handle_event(self, event: Event) -> bool:
        Recorder.seen.append(event.type)
        return True


@pytest.mark.asyncio
async def test_warm_up_is_harmless_to_other_servers_and_absent_peers(server_process, asr_model_dir, tmp_path):
    other = AsyncServer.from_uri(f"unix://{tmp_path}/other.sock")
    await other.start(Recorder)
    try:
        assert await send_warm_up(f"unix://{tmp_path}/other.sock")
        deadline = time.monotonic() + 5
        while not Recorder.seen and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert Recorder.seen == ["warm-up"]
    finally:
        await other.stop()
    started = time.monotonic()
    assert not await send_warm_up(f"unix://{tmp_path}/nobody.sock")
    assert not await send_warm_up("tcp://127.0.0.1:1")
    assert time.monotonic() - started < 3
    # an ASR server whose peer is absent transcribes as usual
    asr = await server_process(
        "wyoming_qwen_asr", "--model", str(asr_model_dir), "--warm-peer", f"unix://{tmp_path}/nobody.sock"
    )
    async with asr.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(1.0))
        assert (await read_until(client, "transcript-stop", "error", timeout=180))[-1].type == "transcript-stop"


def test_each_engine_warms_up_with_one_tiny_inference(asr_model_dir, tiny_dir):
    from wyoming_qwen_asr.engine import AsrEngine
    from wyoming_qwen_tts.engine import TtsEngine

    asr = AsrEngine.load(asr_model_dir, "cpu", torch.float32)
    calls = []
    original = asr.decode
    asr.decode = lambda *args, **kwargs: calls.append(kwargs) or original(*args, **kwargs)
    asr.warm_up()
    assert calls == [{"max_new_tokens": 1}]
    path = tiny_dir / "tts-custom-voice"
    tts = TtsEngine.load(path, str(path), "cpu", torch.float32)
    frames = []
    loop = tts.step_loop  # on a CPU, the lean step loop
    original = loop.frames

    def counted(**kwargs):
        for codes in original(**kwargs):
            frames.append(codes)
            yield codes

    loop.frames = counted
    tts.warm_up()
    assert len(frames) == 2


def test_warm_up_event_round_trip():
    event = WarmUp().event()
    assert event.type == "warm-up" and event.data == {} and event.payload is None
    assert WarmUp.is_type(event.type) and WarmUp.from_event(event) == WarmUp()


@pytest.mark.asyncio
async def test_a_spare_worker_waits_with_its_imports_done_and_no_model(server_process, asr_model_dir):
    """--spare-worker: a worker is started at once and after each idle stop; it loads nothing until a request,
    is kept while unused, serves the next request itself, and is replaced by a fresh spare once idle."""
    server = await server_process(
        "wyoming_qwen_asr", "--model", str(asr_model_dir), "--spare-worker", "--idle-unload", "2", "--idle-exit", "0"
    )
    await wait_for(lambda: "Spare worker pid" in server.log(), 120, "the spare worker")
    (spare,) = server.children()
    await asyncio.sleep(3)  # longer than --idle-unload: an unused spare is kept
    assert server.children() == [spare]
    assert "Loaded model" not in server.log()
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(1.0))
        assert (await read_until(client, "transcript-stop", "error", timeout=180))[-1].type == "transcript-stop"
    assert server.children() == [spare] and server.log().count("Started worker pid") == 1
    await wait_for(lambda: server.children() not in ([], [spare]), 120, "a fresh spare after the idle stop")
    assert "handing back its memory" in server.log()
    assert server.log().count("Loaded model") == 1
