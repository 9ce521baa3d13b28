"""The worker's idle tiers as real processes: loaded, standby, stopped (shared/idle_policy.py).

Each change of tier is entered, logged, served from and left, at the tiny shape."""

from __future__ import annotations

import asyncio
import re

import pytest
from test_gateway_process import alive, transcribe, wait_for
from wyoming.tts import Synthesize

from shared import quantize
from shared.idle_policy import IdlePolicy
from shared.supervisor import WorkerSupervisor
from shared.warm_up import WarmUp

from wyoming_helpers import read_until, tts_args

BACKGROUND = ("--int8-packing", "background")  # the servers' default (the test helpers make `load` the tests')


def standby_entries(log: str, key: str) -> int:
    return len(re.findall(rf"Model {key} in standby \(no connection for [\d.]+ s \(--idle-unload 1\)\)", log))


async def test_asr_standby_is_served_from_and_left_then_the_worker_exits(server_process, asr_model_dir):
    server = await server_process(
        "wyoming_qwen_asr", "--model", str(asr_model_dir), "--idle-unload", "1", "--idle-exit", "4", *BACKGROUND
    )
    await transcribe(server)
    (worker,) = server.children()
    if quantize._fbgemm_reduce_range() is not None:  # packed in the background, after the load
        await wait_for(lambda: "Prepared the kernels of model asr" in server.log(), timeout=30, what="packing")
    first = await transcribe(server)  # with the kernels it will keep (fbgemm's rounds differently from _int_mm)
    await wait_for(lambda: standby_entries(server.log(), "asr") == 1, timeout=30, what="the model in standby")
    assert re.search(rf"Worker pid {worker} in standby after no connection for [\d.]+ s", server.log())
    assert "it stays for up to 4 s (--idle-exit)" in server.log()
    assert alive(worker) and server.children() == [worker]
    # served from standby: the same worker, no new load, the same transcript
    again = await transcribe(server)
    assert server.children() == [worker]
    assert [e.data for e in again if e.type == "transcript"] == [e.data for e in first if e.type == "transcript"]
    log = server.log()
    assert f"Worker pid {worker} leaves standby: a request" in log
    assert "Model asr leaves standby: serving from file pages" in log
    assert log.count("Loading model asr") == 1
    # standby again, then the exit after --idle-exit
    await wait_for(lambda: standby_entries(server.log(), "asr") == 2, timeout=30, what="standby again")
    await wait_for(lambda: server.children() == [], timeout=30, what="the worker to exit")
    assert not alive(worker)
    assert re.search(r"Worker stopped \(no connection for [\d.]+ s \(--idle-exit 4 after standby\)", server.log())
    # the stopped tier: a request starts a fresh worker
    assert (await transcribe(server))[-1].type == "transcript-stop"
    (fresh,) = server.children()
    assert fresh != worker


async def test_tts_standby_is_served_from_and_a_warm_up_leaves_it(server_process, greedy_tiny_dir, voices_dir):
    """Greedy decoding, so that the reply from standby can be compared with the first one."""
    server = await server_process(
        "wyoming_qwen_tts", *tts_args(greedy_tiny_dir, voices_dir, "--idle-unload", "2", *BACKGROUND)
    )

    async def speak():
        async with server.client() as client:
            await client.write_event(Synthesize(text="Hello there.").event())
            return await read_until(client, "audio-stop", timeout=120)

    await speak()
    (worker,) = server.children()
    key = re.search(r"Loading model (\S+)", server.log()).group(1)
    if quantize._fbgemm_reduce_range() is not None:
        await wait_for(lambda: f"Prepared the kernels of model {key}" in server.log(), timeout=30, what="packing")
    first = await speak()
    await wait_for(lambda: f"Model {key} in standby" in server.log(), timeout=30, what="the model in standby")
    assert "it stays until memory runs short" in server.log()  # the default --idle-exit -1
    again = await speak()
    assert server.children() == [worker]
    audio = lambda events: b"".join(e.payload or b"" for e in events if e.type == "audio-chunk")  # noqa: E731
    assert audio(again) == audio(first)
    assert f"Model {key} leaves standby" in server.log()
    # a warm-up (sent by an ASR partner's --warm-peer) takes the worker out of standby before a request
    await wait_for(lambda: server.log().count(f"Model {key} in standby") == 2, timeout=30, what="standby again")
    async with server.client() as client:
        await client.write_event(WarmUp().event())
    await wait_for(lambda: server.log().count(f"Model {key} leaves standby") == 2, timeout=30, what="the warm-up")
    assert f"Worker pid {worker} leaves standby: warm-up" in server.log() and server.children() == [worker]


async def test_idle_exit_zero_stops_the_worker_without_standby(server_process, asr_model_dir):
    server = await server_process(
        "wyoming_qwen_asr", "--model", str(asr_model_dir), "--idle-unload", "1", "--idle-exit", "0"
    )
    await transcribe(server)
    (worker,) = server.children()
    await wait_for(lambda: server.children() == [], timeout=30, what="the worker to exit")
    assert not alive(worker) and "in standby" not in server.log()


@pytest.fixture
def asr_supervisor(asr_model_dir):
    argv = ["--model", str(asr_model_dir), "--device", "cpu", "--vad", "off"]
    return WorkerSupervisor("wyoming_qwen_asr", argv)


async def test_memory_pressure_in_standby_stops_the_worker(asr_supervisor):
    """A real worker, a real standby request; the pressure reading is the one part replaced (causing real
    memory pressure on a shared machine is no test)."""
    short = {"now": None}
    policy = IdlePolicy(asr_supervisor, idle_unload=0.2, idle_exit=-1, pressure=lambda: short["now"])
    import shared.idle_policy as idle_policy

    idle_policy.PRESSURE_CHECK_SECONDS, saved = 0.2, idle_policy.PRESSURE_CHECK_SECONDS
    try:
        policy.user_arrived()
        await asr_supervisor.start()
        policy.user_left()
        await wait_for(lambda: policy.tier == IdlePolicy.STANDBY, timeout=30, what="standby")
        await asyncio.sleep(1.0)
        assert asr_supervisor.running and policy.tier == IdlePolicy.STANDBY
        short["now"] = "12 MiB of 24000 MiB available"
        await wait_for(lambda: not asr_supervisor.running, timeout=30, what="the exit under pressure")
        assert policy.tier == IdlePolicy.STOPPED
    finally:
        idle_policy.PRESSURE_CHECK_SECONDS = saved
        await asr_supervisor.stop("test over")
