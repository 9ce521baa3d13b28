"""Figures of a GPU run, side by side in one run, for each dtype and checkpoint shape given.

For each (shape, dtype):
  - speech-to-text, in this process: 8 s of audio decoded to 32 tokens by the official `generate` and by our
    decode loop replaying CUDA graphs (median of 3 after a warm-up);
  - through real gateways (`--device DEVICE --dtype DTYPE --idle-unload 5`):
    - speech-to-text, with CUDA graphs (the default) and with `--no-cuda-graphs`: a 5 s command and an 8 s
      utterance sent at real-time pace; seconds from `audio-stop` to the transcript (target on an H100/H200,
      0.6B in bfloat16: 5 s command at most 0.150 s);
    - text-to-speech with its defaults: one sentence; seconds to the first audio and compute per second of
      speech (synthesis time / audio duration; targets at most 0.050 s and 0.10 s). The official loop
      (`--no-cuda-graphs`) takes about 25 s a sentence there: `script/bench tts-graphs` measures it per frame;
  - GPU memory of the workers with the models loaded, and GPU memory held by any of our processes after the
    idle stop (expected: 0, because the worker exits).
Random weights run to the output caps; the figures are speed and memory, not accuracy.

    script/gpu-check                  (runs this with the other stages)
    python bench/gpu_check.py --shapes real-0.6b --dtypes bfloat16 [--models DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import statistics
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
ASR_TOKENS = 32


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


def asr_engine_seconds(model: Path, device: str, dtype_name: str, repeats: int = 3) -> dict:
    """Seconds to decode 8 s of audio to ASR_TOKENS tokens, official generate against our graphed loop."""
    import numpy as np

    from shared.devices import resolve_dtype
    from shared.graphs import runtime_for
    from wyoming_qwen_asr.engine import AsrEngine

    dtype = resolve_dtype(dtype_name, device)
    runtime = runtime_for(device)
    audio = np.frombuffer(speechlike(8.0), dtype=np.int16).astype(np.float32) / 32768
    figures = {}
    for name, graphs in (("official generate", False), ("decode loop, graphs", True)):
        engine = AsrEngine.load(model, device, dtype, cuda_graphs=graphs)
        prompt = engine.prompt("", "English")
        times = []
        for _ in range(repeats + 1):
            runtime.synchronize()
            started = time.perf_counter()
            tokens = engine.decode(audio, prompt, max_new_tokens=ASR_TOKENS)
            times.append(time.perf_counter() - started)
        figures[name] = dict(seconds=statistics.median(times[1:]), tokens=len(tokens))
        del engine
    return figures


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


async def asr_latency(uri, seconds: float) -> float:
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioStop
    from wyoming.client import AsyncClient

    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(seconds), realtime=True, stop=False)
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


async def median_of(repeats, measure):
    results = [await measure() for _ in range(repeats)]
    if isinstance(results[0], tuple):
        return tuple(statistics.median(r[i] for r in results) for i in range(len(results[0])))
    return statistics.median(results)


async def measure(shape, dtype, device, workdir, models_dir, repeats):
    models = models_dir / shape
    for name in ("asr", "tts-custom-voice"):  # the Base and VoiceDesign models load only for their voices
        if not (models / name / "config.json").exists():
            tiny_models.BUILDERS[name](models / name, shape=shape)
    row = dict(asr_engine=asr_engine_seconds(models / "asr", device, dtype))
    # the idle stop hands the GPU back (--idle-exit 0); the standby is measured on a server of its own below
    common = ["--device", device, "--dtype", dtype, "--idle-unload", "5", "--idle-exit", "0"]
    voices = workdir / "voices"
    voices.mkdir(exist_ok=True)
    servers = {}
    for name, extra in (("graphs", []), ("no graphs", ["--no-cuda-graphs"])):
        servers[f"asr {name}"] = await start(
            [sys.executable, "-m", "wyoming_qwen_asr", "--model", str(models / "asr"), *common, *extra],
            workdir,
            f"asr-{name.replace(' ', '-')}",
        )
    servers["tts graphs"] = await start(
        [sys.executable, "-m", "wyoming_qwen_tts", *tts_args(models, voices), *common], workdir, "tts-graphs"
    )
    try:
        row["gpu_mib_loaded"] = {}
        for name in ("graphs", "no graphs"):
            few = repeats if name == "graphs" else 1
            process, uri = servers[f"asr {name}"]
            await asr_latency(uri, 1.0)  # starts the worker and loads (and warms) the model
            row[f"asr {name}"] = dict(
                command_5s=await median_of(few, lambda uri=uri: asr_latency(uri, 5.0)),
                utterance_8s=await asr_latency(uri, 8.0),
            )
            row["gpu_mib_loaded"][f"asr {name}"] = gpu_memory_mib(family(process.pid))
        process, uri = servers["tts graphs"]
        await tts_timings(uri)
        first, rtf = await median_of(repeats, lambda: tts_timings(uri))
        row["tts graphs"] = dict(first_audio=first, rtf=rtf)
        row["gpu_mib_loaded"]["tts graphs"] = gpu_memory_mib(family(process.pid))
        deadline = time.monotonic() + 60
        processes = [process for process, _uri in servers.values()]
        while time.monotonic() < deadline and any(len(family(p.pid)) > 1 for p in processes):
            await asyncio.sleep(0.5)
        row["gpu_mib_after_idle"] = gpu_memory_mib([pid for p in processes for pid in family(p.pid)])
        row["asr standby"] = await asr_standby(models / "asr", device, dtype, workdir)
        return row
    finally:
        for process, _uri in servers.values():
            process.terminate()
            await process.wait()


async def asr_standby(model: Path, device: str, dtype: str, workdir: Path) -> dict:
    """The default idle tier on the GPU: the first command after the standby against a warm one, its GPU
    memory, and whether anything was captured again (it must not be: the graphs stay, and the weights at
    the addresses they read)."""
    command = [sys.executable, "-m", "wyoming_qwen_asr", "--model", str(model), "--device", device]
    process, uri = await start([*command, "--dtype", dtype, "--idle-unload", "3"], workdir, "asr-standby")
    log = workdir / "asr-standby.log"
    try:
        await asr_latency(uri, 1.0)
        warm = await asr_latency(uri, 5.0)
        deadline = time.monotonic() + 60
        while "in standby (" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        standby_mib = gpu_memory_mib(family(process.pid))
        first = await asr_latency(uri, 5.0)
        text = log.read_text(errors="replace")
        return dict(
            warm=warm,
            first=first,
            gpu_mib=standby_mib,
            entered="in standby (" in text,
            captures=text.count("Captured the ASR decode step"),
        )
    finally:
        process.terminate()
        await process.wait()


def print_row(shape, dtype, r):
    print(f"\n{shape}, {dtype}")
    engine = r["asr_engine"]
    base = engine["official generate"]["seconds"]
    for name, e in engine.items():
        print(
            f"  ASR engine, 8 s of audio -> {e['tokens']} tokens, {name}: {e['seconds']:.3f} s "
            f"({e['seconds'] / base:.2f} x official)"
        )
    for name in ("graphs", "no graphs"):
        a = r[f"asr {name}"]
        print(
            f"  ASR server, {name}: audio-stop -> transcript, 5 s command {a['command_5s']:.3f} s, "
            f"8 s utterance {a['utterance_8s']:.3f} s"
        )
    t = r["tts graphs"]
    print(f"  TTS server (defaults): first audio {t['first_audio']:.3f} s, compute per s of speech {t['rtf']:.3f} s")
    loaded = ", ".join(f"{name} {mib:.0f}" for name, mib in r["gpu_mib_loaded"].items())
    print(f"  GPU MiB loaded: {loaded}; after the idle stop (--idle-exit 0): {r['gpu_mib_after_idle']:.0f}")
    s = r["asr standby"]
    print(
        f"  ASR standby (the default idle tier; entered: {s['entered']}): 5 s command {s['first']:.3f} s after it "
        f"against {s['warm']:.3f} s warm; GPU MiB {s['gpu_mib']:.0f}; graph captures in that worker: "
        f"{s['captures']} (1: none after the standby)"
    )


async def run(args) -> int:
    workdir = scratch_dir("gpu-check-")
    models_dir = args.models or workdir
    rows = []
    for shape in args.shapes:
        for dtype in args.dtypes:
            print(f"measuring {shape} {dtype} on {args.device} ...", file=sys.stderr, flush=True)
            row = await measure(shape, dtype, args.device, workdir, models_dir, args.repeats)
            rows.append((shape, dtype, row))
            print_row(shape, dtype, row)
            print("JSON " + json.dumps(dict(shape=shape, dtype=dtype, **row)), flush=True)
    # without nvidia-smi (a CPU dry run) there is no GPU memory to hand back
    return 0 if all(r["gpu_mib_after_idle"] == 0 or math.isnan(r["gpu_mib_after_idle"]) for _, _, r in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", nargs="+", default=["real-0.6b"], choices=sorted(tiny_models.ASR_SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--models", type=Path, help="Checkpoints built earlier, one folder per shape (script/gpu-check passes its own)"
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
