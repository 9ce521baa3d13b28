"""Figures of a GPU run, side by side in one run, for each dtype and checkpoint shape given.

For each (shape, dtype) both servers are started as real gateways with `--device DEVICE --dtype DTYPE
--idle-unload 5`, then:
  - speech-to-text: an 8-second utterance at real-time pace; seconds from `audio-stop` to the transcript;
  - text-to-speech: one sentence; seconds to the first audio and the real-time factor (synthesis time /
    audio duration: below 1 is faster than real time), with the official generation loop and with
    `--cuda-graphs` (targets for 0.6B in bfloat16 on an H100: first audio at most 0.150 s, RTF at most 0.2);
  - GPU memory of the workers with the model loaded, and GPU memory held by any of our processes after
    the idle stop (expected: 0, because the worker exits).
Random weights run to the output caps; the figures are speed and memory, not accuracy.

    script/gpu-check                  (runs this after the protocol tests)
    .venv/bin/python bench/gpu_check.py --shapes tiny real-0.6b --dtypes bfloat16 float16
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tiny_models  # noqa: E402
from wyoming_helpers import children, read_until, scratch_dir, send_audio, speechlike, tts_args  # noqa: E402

SENTENCE = "The lights in the kitchen are off now, and the front door is locked for the night."


def gpu_memory_mib(pids) -> float:
    """GPU memory used by these processes (nvidia-smi), or nan without an NVIDIA driver."""
    if shutil.which("nvidia-smi") is None:
        return float("nan")
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
    ).stdout
    used = {int(p): float(m) for p, m in (line.split(",") for line in out.strip().splitlines() if line.strip())}
    return sum(used.get(pid, 0.0) for pid in pids)


def family(pid: int):
    """The gateway and its workers."""
    return [pid, *children(pid)]


async def start(command, workdir, name):
    from wyoming.client import AsyncClient

    uri = f"unix://{workdir}/{name}.sock"
    log = open(workdir / f"{name}.log", "wb")
    process = await asyncio.create_subprocess_exec(*command, "--uri", uri, stdout=log, stderr=log)
    for _ in range(600):
        try:
            async with AsyncClient.from_uri(uri):
                return process, uri
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{name} did not listen; see {workdir / name}.log")


async def asr_latency(uri) -> float:
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioStop
    from wyoming.client import AsyncClient

    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(8.0), realtime=True, stop=False)
        stopped = time.monotonic()
        await client.write_event(AudioStop().event())
        await read_until(client, "transcript", timeout=600)
        return time.monotonic() - stopped


async def tts_timings(uri):
    from wyoming.client import AsyncClient
    from wyoming.tts import Synthesize

    async with AsyncClient.from_uri(uri) as client:
        started = time.monotonic()
        await client.write_event(Synthesize(text=SENTENCE).event())
        first, samples = None, 0
        while True:
            event = await client.read_event()
            if event is None or event.type in ("error", "audio-stop"):
                break
            if event.type == "audio-chunk":
                first = first or time.monotonic() - started
                samples += len(event.payload or b"") // 2
        seconds = samples / 24000
        return first, (time.monotonic() - started) / seconds if seconds else float("nan")


async def measure(shape, dtype, device, workdir):
    models = workdir / shape
    if not (models / "asr" / "config.json").exists():
        for name, build in tiny_models.BUILDERS.items():
            build(models / name, shape=shape)
    common = ["--device", device, "--dtype", dtype, "--idle-unload", "5"]
    asr, asr_uri = await start(
        [sys.executable, "-m", "wyoming_qwen_asr", "--model", str(models / "asr"), *common], workdir, "asr"
    )
    voices = workdir / "voices"
    voices.mkdir(exist_ok=True)
    tts, tts_uri = await start(
        [sys.executable, "-m", "wyoming_qwen_tts", *tts_args(models, voices), *common], workdir, "tts"
    )
    graphed, graphed_uri = await start(
        [sys.executable, "-m", "wyoming_qwen_tts", *tts_args(models, voices), *common, "--cuda-graphs"],
        workdir,
        "tts-graphs",
    )
    try:
        await asr_latency(asr_uri)  # cold: starts the worker and loads the model
        latency = await asr_latency(asr_uri)
        await tts_timings(tts_uri)
        first_audio, rtf = await tts_timings(tts_uri)
        loaded = gpu_memory_mib(family(asr.pid) + family(tts.pid))
        await tts_timings(graphed_uri)  # cold: also captures the graphs
        graphs_first_audio, graphs_rtf = await tts_timings(graphed_uri)
        servers = (asr, tts, graphed)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(len(family(server.pid)) > 1 for server in servers):
            await asyncio.sleep(0.5)
        after = gpu_memory_mib([pid for server in servers for pid in family(server.pid)])
        return dict(
            latency=latency,
            first_audio=first_audio,
            rtf=rtf,
            graphs_first_audio=graphs_first_audio,
            graphs_rtf=graphs_rtf,
            loaded=loaded,
            after=after,
        )
    finally:
        for process in (asr, tts, graphed):
            process.terminate()
            await process.wait()


async def run(args) -> int:
    workdir = scratch_dir("gpu-check-")
    rows = []
    for shape in args.shapes:
        for dtype in args.dtypes:
            print(f"measuring {shape} {dtype} on {args.device} ...", file=sys.stderr, flush=True)
            rows.append((shape, dtype, await measure(shape, dtype, args.device, workdir)))
    print(f"\ndevice {args.device}; ASR: 8 s utterance at real-time pace; TTS: {len(SENTENCE)} characters")
    header = (
        "shape",
        "dtype",
        "ASR audio-stop->text s",
        "TTS first audio s",
        "TTS RTF",
        "with --cuda-graphs: first audio s",
        "RTF",
        "GPU MiB loaded",
        "after idle",
    )
    print(" | ".join(header))
    for shape, dtype, r in rows:
        print(
            f"{shape} | {dtype} | {r['latency']:.3f} | {r['first_audio']:.3f} | {r['rtf']:.3f} | "
            f"{r['graphs_first_audio']:.3f} | {r['graphs_rtf']:.3f} | {r['loaded']:.0f} | {r['after']:.0f}"
        )
    # without nvidia-smi (a CPU dry run) there is no GPU memory to hand back
    return 0 if all(r["after"] == 0 or math.isnan(r["after"]) for _, _, r in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", nargs="+", default=["tiny", "real-0.6b"], choices=sorted(tiny_models.ASR_SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
