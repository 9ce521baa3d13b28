"""The gateway and its worker as real processes: start on demand, idle stop, faults, zeroconf."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from wyoming.asr import Transcribe
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeVoice

from wyoming_helpers import read_until, send_audio, speechlike, tts_args

pytestmark = pytest.mark.asyncio


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


async def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def transcribe(server, seconds=1.0, realtime=False):
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(seconds), realtime=realtime)
        return await read_until(client, "transcript-stop", "error", timeout=180)


async def describe(server):
    async with server.client() as client:
        await client.write_event(Describe().event())
        return Info.from_event((await read_until(client, "info", timeout=5))[-1])


async def test_describe_needs_no_worker_even_while_one_starts(server_process, asr_model_dir):
    server = await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir))
    assert (await describe(server)).asr[0].name == "qwen3-asr"
    assert server.children() == []
    first = asyncio.create_task(transcribe(server))  # starts the worker (imports take seconds)
    await wait_for(lambda: server.children(), what="a worker")
    info = await describe(server)
    assert info.asr[0].supports_transcript_streaming and not first.done()
    events = await first
    assert events[-1].type == "transcript-stop"


async def test_idle_worker_is_stopped_and_a_new_request_starts_a_fresh_one(server_process, asr_model_dir):
    server = await server_process(
        "wyoming_qwen_asr", "--model", str(asr_model_dir), "--idle-unload", "2", "--idle-exit", "0"
    )
    assert (await transcribe(server))[-1].type == "transcript-stop"
    (worker,) = server.children()
    await wait_for(lambda: server.children() == [], timeout=30, what="the idle worker to exit")
    assert not alive(worker)
    assert "no connection for" in server.log() and "--idle-unload 2" in server.log()
    assert (await transcribe(server))[-1].type == "transcript-stop"
    (fresh,) = server.children()
    assert fresh != worker


async def test_worker_killed_during_an_asr_stream(server_process, asr_model_dir):
    server = await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir), "--chunk-seconds", "0.3")
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        sender = asyncio.create_task(send_audio(client, speechlike(30.0), realtime=True))
        await read_until(client, "transcript-chunk", timeout=120)
        (worker,) = server.children()
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        events = await read_until(client, "error", timeout=5)
        assert time.monotonic() - killed < 1.0
        assert "worker" in events[-1].data["text"] and "-9" in events[-1].data["text"]
        sender.cancel()
    assert (await transcribe(server))[-1].type == "transcript-stop"


async def test_worker_killed_during_a_tts_stream(server_process, tiny_dir, voices_dir):
    server = await server_process("wyoming_qwen_tts", *tts_args(tiny_dir, voices_dir))
    async with server.client() as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="One is here. " * 8 + "And more. ").event())
        await read_until(client, "audio-chunk", timeout=120)
        (worker,) = server.children()
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        events = await read_until(client, "error", timeout=5)
        assert time.monotonic() - killed < 1.0 and events[-1].data["code"] == "worker-died"
    async with server.client() as client:
        await client.write_event(Synthesize(text="Back again.").event())
        assert (await read_until(client, "audio-stop", "error", timeout=120))[-1].type == "audio-stop"


async def test_a_checkpoint_that_fails_to_load_backs_off(server_process, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    server = await server_process("wyoming_qwen_asr", "--model", str(broken))
    first = await transcribe(server)
    assert first[-1].type == "error" and "failed" in first[-1].data["text"].lower()
    started = time.monotonic()
    second = await transcribe(server)
    assert second[-1].type == "error"
    assert "next attempt in" in second[-1].data["text"] and "failed 1 time" in second[-1].data["text"]
    assert time.monotonic() - started < 3.0  # refused at once, not after another failing load
    assert server.log().count("Loading model asr\n") == 1  # one attempt, then refusals


async def test_one_loaded_model_at_a_time_evicts_the_other(server_process, tiny_dir, voices_dir):
    server = await server_process("wyoming_qwen_tts", *tts_args(tiny_dir, voices_dir, "--max-loaded-models", "1"))
    for voice in ("ryan", "grandma", "ryan"):
        async with server.client() as client:
            await client.write_event(Synthesize(text="Hi.", voice=SynthesizeVoice(name=voice)).event())
            assert (await read_until(client, "audio-stop", "error", timeout=120))[-1].type == "audio-stop"
    log = server.log()
    assert "Unloaded model custom-voice (--max-loaded-models 1 reached, clone needed)" in log
    assert "Unloaded model clone (--max-loaded-models 1 reached, custom-voice needed)" in log


async def test_request_timeout_restarts_a_stuck_worker(server_process, tiny_dir, voices_dir):
    server = await server_process("wyoming_qwen_tts", *tts_args(tiny_dir, voices_dir, "--request-timeout", "6"))
    async with server.client() as client:
        await client.write_event(Synthesize(text="Warm up.").event())
        await read_until(client, "audio-stop", timeout=120)
    (worker,) = server.children()
    os.kill(worker, signal.SIGSTOP)  # a hung worker: alive, but answering nothing
    try:
        async with server.client() as client:
            await client.write_event(Synthesize(text="Are you there?").event())
            started = time.monotonic()
            events = await read_until(client, "error", timeout=20)
            assert events[-1].data["code"] == "timeout" and 5.5 < time.monotonic() - started < 14  # + the probe grace
        await wait_for(lambda: not alive(worker), timeout=20, what="the stuck worker to be killed")
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGCONT)
    assert "showed no progress" in server.log()
    async with server.client() as client:
        await client.write_event(Synthesize(text="Fresh worker.").event())
        events = await read_until(client, "audio-stop", "error", timeout=120)
        assert events[-1].type == "audio-stop", events[-1].data


async def test_no_gateway_serves_in_process(server_process, asr_model_dir, tiny_dir, voices_dir):
    asr = await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir), "--no-gateway")
    assert (await transcribe(asr))[-1].type == "transcript-stop"
    tts = await server_process("wyoming_qwen_tts", *tts_args(tiny_dir, voices_dir, "--no-gateway"))
    async with tts.client() as client:
        await client.write_event(Synthesize(text="Hello.").event())
        assert (await read_until(client, "audio-stop", timeout=120))[-1].type == "audio-stop"
    assert asr.children() == [] and tts.children() == []


async def test_zeroconf_advertises_on_loopback(server_process, asr_model_dir):
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    await server_process(
        "wyoming_qwen_asr",
        "--model",
        str(asr_model_dir),
        "--zeroconf",
        "test-qwen-asr",
        "--zeroconf-interface",
        "127.0.0.1",
        uri=f"tcp://127.0.0.1:{port}",
    )
    browser = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        info = AsyncServiceInfo("_wyoming._tcp.local.", "test-qwen-asr._wyoming._tcp.local.")
        found = False
        for _ in range(10):
            if await info.async_request(browser.zeroconf, 1000):
                found = True
                break
        assert found, "service not resolved over loopback mDNS"
        assert info.port == port and info.parsed_addresses() == ["127.0.0.1"]
    finally:
        await browser.async_close()


async def test_missing_zeroconf_package_is_a_clear_error(tmp_path, asr_model_dir):
    fake = tmp_path / "no-zeroconf" / "zeroconf"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('zeroconf is not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    result = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wyoming_qwen_asr",
        "--uri",
        "tcp://127.0.0.1:0",
        "--model",
        str(asr_model_dir),
        "--zeroconf",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    output, _ = await asyncio.wait_for(result.communicate(), 60)
    assert result.returncode != 0
    assert b"pip install 'wyoming-qwen[zeroconf]'" in output


async def test_default_zeroconf_names_differ_and_never_advertise_any_address():
    from shared.zeroconf_advertiser import advertised_address, default_name

    assert default_name("asr") != default_name("tts") and default_name("asr").startswith("qwen-asr-")
    assert advertised_address("192.168.1.5") == "192.168.1.5"
    assert advertised_address("0.0.0.0", "10.0.0.2") == "10.0.0.2"


def hostile_directory(path: Path) -> Path:
    """A working directory with files named like our packages (a user's own `shared/`, say)."""
    (path / "shared").mkdir(parents=True)
    (path / "shared" / "__init__.py").write_text("raise ImportError('the user shared package was imported')\n")
    (path / "wyoming_qwen_asr.py").write_text("raise ImportError('the user wyoming_qwen_asr.py was imported')\n")
    (path / "wyoming_qwen_tts.py").write_text("raise ImportError('the user wyoming_qwen_tts.py was imported')\n")
    return path


async def test_working_directory_cannot_shadow_the_worker_packages(server_process, asr_model_dir, tmp_path):
    """Started (as users do, by its console script) from a directory holding a broken `shared/` and a
    broken `wyoming_qwen_asr.py`, the gateway's worker still imports our packages and transcribes."""
    cwd = hostile_directory(tmp_path / "home")
    server = await server_process(
        "wyoming_qwen_asr", "--model", str(asr_model_dir), cwd=cwd, console_script="wyoming-qwen-asr"
    )
    events = await transcribe(server)
    assert events[-1].type == "transcript-stop", server.log()[-3000:]
    assert "user shared package" not in server.log()


def test_worker_command_ignores_the_working_directory_and_pythonpath(tmp_path):
    """The worker's own start: neither its working directory nor PYTHONPATH replaces our packages."""
    import subprocess

    from shared.supervisor import worker_command

    hostile = hostile_directory(tmp_path / "hostile")
    (hostile / "wyoming_qwen_asr.py").unlink()
    (hostile / "wyoming_qwen_asr").mkdir()
    (hostile / "wyoming_qwen_asr" / "__init__.py").write_text("raise ImportError('PYTHONPATH package')\n")
    result = subprocess.run(
        worker_command("wyoming_qwen_asr", ["--version"]),
        cwd=hostile,
        env={**os.environ, "PYTHONPATH": str(hostile)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from shared import __version__

    assert result.stdout.strip() == __version__


async def test_the_worker_computes_with_the_thread_settings_it_was_given(server_process, asr_model_dir):
    """--threads and --cpu-wait reach the worker's environment, where OpenMP reads them when torch loads."""
    server = await server_process(
        "wyoming_qwen_asr", "--model", str(asr_model_dir), "--threads", "1", "--cpu-wait", "passive"
    )
    events = await transcribe(server)
    assert events[-1].type == "transcript-stop", server.log()[-3000:]
    (worker,) = server.children()
    environ = dict(
        item.split("=", 1) for item in Path(f"/proc/{worker}/environ").read_text().split("\0") if "=" in item
    )
    assert (environ["OMP_NUM_THREADS"], environ["OMP_WAIT_POLICY"], environ["GOMP_SPINCOUNT"]) == ("1", "PASSIVE", "0")


@pytest.mark.parametrize("kernel, logged", [("int_mm", "torch._int_mm"), ("fbgemm", "fbgemm kernels")])
async def test_the_int8_kernel_option_reaches_the_worker(server_process, asr_model_dir, kernel, logged):
    """--int8-kernel is read where the model loads: in the worker, which the gateway starts."""
    server = await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir), "--int8-kernel", kernel)
    assert (await transcribe(server))[-1].type == "transcript-stop"
    quantized = [line for line in server.log().splitlines() if "Quantized" in line]
    assert quantized and all(logged in line for line in quantized), quantized
