"""Memory handed back: gateway and worker resident memory, cold and warm request times, in one run.

For each server a real gateway process is started with --idle-unload 2 (the model is a random
checkpoint of the given shape, built offline), then:
  gateway RSS with no worker -> one request (cold: spawn, imports, load, result) -> RSS of gateway and
  worker (model loaded) -> a second request (warm) -> the worker stops when idle -> gateway RSS again.

    script/bench memory [--shape bench|tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tiny_models  # noqa: E402
from wyoming_helpers import children, read_until, rss_kib, scratch_dir, send_audio, speechlike, wait_until_listening  # noqa: E402

GATEWAY_TARGET_MIB = 40


def rss_mib(pid: int) -> float:
    kib = rss_kib(pid)
    return float("nan") if kib is None else kib / 1024


async def start(module, args, workdir):
    uri = f"unix://{workdir}/{module}.sock"
    log = open(workdir / f"{module}.log", "wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        "--uri",
        uri,
        "--device",
        "cpu",
        "--idle-unload",
        "2",
        "--idle-exit",  # measures the full exit (the standby: script/bench cold-start)
        "0",
        *args,
        stdout=log,
        stderr=log,
        cwd=ROOT,
    )
    await wait_until_listening(process, uri, workdir / f"{module}.log", module)
    return process, uri


async def asr_request(uri):
    from wyoming.asr import Transcribe
    from wyoming.client import AsyncClient

    async with AsyncClient.from_uri(uri) as client:
        started = time.monotonic()
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(2.0))
        await read_until(client, "transcript", timeout=900)
        return time.monotonic() - started


async def tts_request(uri):
    from wyoming.client import AsyncClient
    from wyoming.tts import Synthesize

    async with AsyncClient.from_uri(uri) as client:
        started = time.monotonic()
        await client.write_event(Synthesize(text="Hello there.").event())
        await read_until(client, "audio-chunk", timeout=900)
        first = time.monotonic() - started
        await read_until(client, "audio-stop", timeout=900)
        return first


async def measure(name, module, args, request, workdir):
    from wyoming.client import AsyncClient
    from wyoming.info import Describe

    process, uri = await start(module, args, workdir)
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Describe().event())
        await read_until(client, "info")
    await asyncio.sleep(0.5)
    idle = rss_mib(process.pid)
    cold = await request(uri)
    (worker,) = children(process.pid)
    after_request = rss_mib(process.pid)
    worker_rss = rss_mib(worker)
    warm = await request(uri)
    deadline = time.monotonic() + 60
    while children(process.pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    stopped = not children(process.pid)
    after_unload = rss_mib(process.pid)
    process.terminate()
    await process.wait()
    print(f"\n{name}:")
    print(f"  gateway RSS, no worker:        {idle:7.1f} MiB")
    print(f"  gateway RSS, after a request:  {after_request:7.1f} MiB")
    print(f"  worker RSS, model loaded:      {worker_rss:7.1f} MiB  (gateway/worker = {idle / worker_rss:.3f})")
    print(f"  gateway RSS, after idle stop:  {after_unload:7.1f} MiB  (worker stopped: {stopped})")
    print(f"  cold request (spawn to first result) / warm request = {cold:.2f} s / {warm:.2f} s = {cold / warm:.0f}x")
    return max(idle, after_request, after_unload) <= GATEWAY_TARGET_MIB and stopped


async def run(args) -> int:
    workdir = scratch_dir("bench-memory-")
    print(
        f"checkpoints: random, shape '{args.shape}' (ASR {tiny_models.ASR_SHAPES[args.shape]}, "
        f"TTS {tiny_models.TTS_SHAPES[args.shape]})"
    )
    asr = tiny_models.build_asr(workdir / "asr", shape=args.shape)
    tts = tiny_models.build_tts(workdir / "tts", shape=args.shape)
    ok = await measure("speech-to-text", "wyoming_qwen_asr", ["--model", str(asr)], asr_request, workdir)
    ok &= await measure("text-to-speech", "wyoming_qwen_tts", ["--model", str(tts)], tts_request, workdir)
    print(f"\ngateway at most {GATEWAY_TARGET_MIB} MiB and back to it after the idle stop: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="bench", choices=sorted(tiny_models.TTS_SHAPES))
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
