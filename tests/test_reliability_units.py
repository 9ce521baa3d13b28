"""Loads beside inference, the busy/stuck probe, environment values, and what never reaches logs or pickle."""

from __future__ import annotations

import asyncio
import logging
import pickle
import re
import threading
import time
from pathlib import Path

import pytest
from wyoming.ping import Ping
from wyoming.tts import Synthesize, SynthesizeVoice

from shared.inference import InferenceThread, heartbeat
from shared.model_manager import ModelManager

from wyoming_helpers import read_until, send_audio, speechlike

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = [ROOT / "shared", ROOT / "wyoming_qwen_asr", ROOT / "wyoming_qwen_tts"]


async def test_a_slow_load_neither_blocks_other_models_nor_looks_stuck():
    manager = ModelManager()
    release = threading.Event()
    manager.register("fast", lambda: "fast model", -1)
    manager.register("slow", lambda: release.wait(30) and "slow model", -1)
    await manager.preload("fast")
    slow = asyncio.create_task(manager.run("slow", lambda model: model))
    await asyncio.sleep(0.2)
    assert manager.loading() == ["slow"]
    started = time.monotonic()
    assert await manager.run("fast", lambda model: model) == "fast model"  # not behind the load
    await asyncio.wait_for(manager.inference.responsive(), 1.0)  # the probe sees an idle thread
    assert time.monotonic() - started < 1.0 and not slow.done()
    release.set()
    assert await slow == "slow model" and manager.loading() == []
    await manager.close()


async def test_a_model_that_must_warm_up_is_loaded_only_once_warm():
    """On CUDA (the servers register their models so there) a load includes one warm-up inference on the
    inference thread, before any request runs; a second preload does not warm again; a reload warms again."""
    events = []

    class Model:
        def warm_up(self):
            events.append(("warm", threading.current_thread().name))

    manager = ModelManager()
    manager.register("m", Model, -1, warm_after_load=True)
    await manager.run("m", lambda _model: events.append(("request", threading.current_thread().name)))
    assert events == [("warm", "inference"), ("request", "inference")]
    await manager.preload("m", warm=True)
    assert len(events) == 2
    await manager.unload("m", "test")
    await manager.run("m", lambda _model: None)
    assert [e[0] for e in events] == ["warm", "request", "warm"]
    manager.register("cold", Model, -1)
    await manager.run("cold", lambda _model: None)
    assert len(events) == 3  # not registered to warm: nothing ran
    await manager.close()


async def test_the_probe_tells_a_busy_thread_from_a_stuck_one():
    inference = InferenceThread()
    stop, stuck = threading.Event(), threading.Event()

    def busy() -> None:  # a long job that beats between its steps
        while not stop.is_set():
            heartbeat()
            time.sleep(0.01)

    job = asyncio.create_task(inference.run(busy))
    await asyncio.sleep(0.1)
    await asyncio.wait_for(inference.responsive(), 1.0)
    stop.set()
    await job
    job = asyncio.create_task(inference.run(lambda: stuck.wait(30)))  # no beat: a hung kernel
    await asyncio.sleep(0.1)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(inference.responsive(), 1.0)
    stuck.set()
    await job
    inference.close()


async def test_the_health_ping_says_what_the_worker_does(start_asr):
    server = await start_asr(preload=False)
    release = threading.Event()
    slot_loader = server.app.manager._slots[server.app.model_key].loader
    server.app.manager._slots[server.app.model_key].loader = lambda: release.wait(30) and slot_loader()
    async with server.client() as client:
        from wyoming.asr import Transcribe

        await client.write_event(Transcribe(language="en").event())
        request = asyncio.create_task(send_audio(client, speechlike(1.0)))
        await asyncio.sleep(0.3)
        async with server.client() as probe:
            await probe.write_event(Ping(text="health").event())
            (pong,) = await read_until(probe, "pong", timeout=5)
            assert pong.data["text"] == "loading asr"
            await probe.write_event(Ping(text="hello").event())
            assert (await read_until(probe, "pong", timeout=5))[-1].data["text"] == "hello"
        release.set()
        await request
        assert (await read_until(client, "transcript-stop", "error", timeout=60))[-1].type == "transcript-stop"


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("QWEN_ASR_ZEROCONF", "false", None),
        ("QWEN_ASR_ZEROCONF", "0", None),
        ("QWEN_ASR_ZEROCONF", "true", ""),
        ("QWEN_ASR_ZEROCONF", "kitchen", "kitchen"),
        ("QWEN_ASR_PRELOAD", "off", False),
        ("QWEN_ASR_PRELOAD", "Yes", True),
    ],
)
def test_environment_switches_mean_what_they_say(monkeypatch, variable, value, expected):
    from wyoming_qwen_asr.options import parse_args

    monkeypatch.setenv(variable, value)
    dest = variable.removeprefix("QWEN_ASR_").lower()
    assert getattr(parse_args([]), dest) == expected


@pytest.mark.parametrize(
    "variable, value, hint",
    [
        ("QWEN_ASR_PRELOAD", "ture", "expected one of"),
        ("QWEN_ASR_IDLE_UNLOAD", "five", "could not convert"),
        ("QWEN_ASR_DTYPE", "float64", "expected one of"),
    ],
)
def test_a_bad_environment_value_is_an_error_naming_the_variable(monkeypatch, capsys, variable, value, hint):
    from wyoming_qwen_asr.options import parse_args

    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit):
        parse_args([])
    err = capsys.readouterr().err
    assert variable in err and value in err and hint in err


def test_product_code_never_unpickles():
    pattern = re.compile(r"\bpickle\b|torch\.load\(|joblib|allow_pickle\s*=\s*True|weights_only\s*=\s*False|dill\b")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in PRODUCT
        for path in folder.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line) and "nothing that unpickles" not in line
    ]
    assert offenders == []


async def test_a_pickle_planted_as_the_clone_prompt_cache_is_never_run(start_tts, voices_dir, tmp_path):
    from wyoming_qwen_tts.clone_prompts import cache_path

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    server = await start_tts()
    model_id = server.app.models["clone"]
    cache_path(voices_dir / "grandma", model_id).write_bytes(pickle.dumps(Exploit()))
    async with server.client() as client:
        await client.write_event(Synthesize(text="Hi.", voice=SynthesizeVoice(name="grandma")).event())
        assert (await read_until(client, "audio-stop", "error", timeout=120))[-1].type == "audio-stop"
    assert not marker.exists()


async def test_logs_hold_text_only_at_debug_and_never_audio(start_asr, start_tts, caplog):
    caplog.set_level(logging.INFO)
    secret = "Zebrafinch quartermaster"
    tts = await start_tts()
    async with tts.client() as client:
        await client.write_event(Synthesize(text=f"{secret}.").event())
        await read_until(client, "audio-stop", timeout=120)
    asr = await start_asr()
    async with asr.client() as client:
        from wyoming.asr import Transcribe

        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(1.0))
        events = await read_until(client, "transcript-stop", timeout=60)
    transcript = events[-2].data["text"]
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert info and not any(secret in m or "Zebrafinch" in m for m in info)
    assert not transcript.strip() or not any(transcript.strip() in m for m in info)
    assert all(len(m) < 2000 and "\\x00" not in m for m in info)  # no audio bytes
