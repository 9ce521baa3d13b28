"""Our TTS against faster-qwen3-tts, side by side in one run: the same CustomVoice checkpoint, sentence
(bench/gpu_check.py's SENTENCE), frame cap (our `max_frames_for`), speaker and language.

  - ours: in this process, `TtsEngine.load` and `engine.stream` with their defaults (frame streaming with our
    default first chunk; `--cuda-graphs on|off|both` to choose the loop);
  - faster-qwen3-tts 0.5.4 (CUDA graphs) with chunk sizes 1, 2 and 8, run by bench/peers/faster_qwen3_tts_run.py
    in its own environment: a subprocess whose PYTHONPATH is only the peer's target folder (--peer-path, or
    GPU_PEER_PYTHONPATH, which `script/gpu-check --wheelhouse DIR` sets), so it runs on the machine's
    transformers 5 and qwen-tts-hf's `qwen_tts`, not ours.

Figures: seconds to the first audio and compute per second of speech (synthesis time / audio seconds: below
1 is faster than real time), medians of RUNS after one warm-up; load time; peak GPU memory
(torch.cuda.max_memory_allocated) of each system's process. Random weights run to the frame cap: speed and
memory, not accuracy. A system that fails gets its error in its row; the others still run. Without CUDA the
peer rows say "needs CUDA" (a dry run still measures ours).

    script/bench gpu-peers --model DIR/tts-custom-voice --device cuda --dtype bfloat16
    script/gpu-check            (the `peers` stage)
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from gpu_check import SENTENCE  # noqa: E402

from wyoming_qwen_tts.engine import TtsEngine, max_frames_for  # noqa: E402

import tiny_models  # noqa: E402
from wyoming_helpers import scratch_dir  # noqa: E402

RUNNER = ROOT / "bench" / "peers" / "faster_qwen3_tts_run.py"
PEER = "faster-qwen3-tts"


def measure_ours(args, model: Path, cuda_graphs=None) -> dict:
    """One row of ours: `TtsEngine.load` with its defaults (or cuda_graphs=True/False), then `stream` with
    our default first chunk (or --first-chunk-frames). The row's name says which loop and first chunk ran."""
    import torch

    from shared.devices import resolve_device, resolve_dtype
    from wyoming_qwen_tts.engine import SAMPLE_RATE
    from wyoming_qwen_tts.voices import PRESET, Voice

    device = resolve_device(args.device)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        # the allocator of that device must exist first, or resetting raises "Invalid device argument" (GPU run)
        torch.zeros(1, device=device)
        torch.cuda.reset_peak_memory_stats(device)
    load_options = {} if cuda_graphs is None else dict(cuda_graphs=cuda_graphs)
    started = time.perf_counter()
    engine = TtsEngine.load(model, str(model), device, resolve_dtype(args.dtype, device), **load_options)
    load_s = time.perf_counter() - started
    voice = Voice(args.speaker, PRESET, args.speaker)
    stream_options = {} if args.first_chunk_frames is None else dict(first_chunk_frames=args.first_chunk_frames)
    first_chunk = args.first_chunk_frames or getattr(engine, "default_first_chunk_frames", None)
    first_chunk = first_chunk or inspect.signature(engine.stream).parameters["first_chunk_frames"].default
    loop = "official loop" if engine.step_loop is None else "step loop" + (", CUDA graphs" if cuda else "")
    row = dict(system=f"ours ({loop}, first chunk {first_chunk})")

    def once():
        first, samples = None, 0

        def emit(audio) -> None:
            nonlocal first, samples
            if first is None:
                first = time.perf_counter() - begun  # a numpy array: decoded and on the host
            samples += len(audio)

        sync()
        begun = time.perf_counter()
        engine.stream(SENTENCE, voice, args.language, emit, **stream_options)
        sync()
        return first, time.perf_counter() - begun, samples / SAMPLE_RATE

    try:
        runs = [once() for _ in range(args.runs + 1)][1:]
        return dict(
            row,
            first_audio_s=statistics.median(first for first, _, _ in runs),
            compute_per_speech_s=statistics.median(total / audio for _, total, audio in runs),
            audio_s=statistics.median(audio for _, _, audio in runs),
            load_s=load_s,
            gpu_mib=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        )
    except Exception as error:
        traceback.print_exc()
        return dict(row, load_s=load_s, error=f"{type(error).__name__}: {error}")
    finally:
        engine = None  # frees its GPU memory before the next system runs
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def measure_peer(args, model: Path, max_frames: int) -> list:
    """One row per chunk size, from the runner's `PEER {json}` lines; its other output goes to stderr."""
    rows = {chunk: dict(error="no result") for chunk in args.chunks}
    if not args.peer_path:
        note = "no peer environment: give --peer-path (script/gpu-check --wheelhouse DIR sets one up)"
        return [dict(chunk=chunk, error=note, expected=True) for chunk in args.chunks]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=args.peer_path, PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    command = [args.peer_python, str(RUNNER), "--model", str(model), "--device", args.device, "--dtype", args.dtype]
    command += ["--text", SENTENCE, "--speaker", args.speaker, "--language", args.language]
    command += ["--max-frames", str(max_frames), "--runs", str(args.runs), "--chunks", *map(str, args.chunks)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        process.kill()

    timer = threading.Timer(args.peer_timeout, stop)
    timer.start()
    try:
        for line in process.stdout:
            if line.startswith("PEER "):
                row = json.loads(line[5:])
                rows[row["chunk"]] = row
            # as it comes, so a run stopped at its limit still leaves these figures in the log
            print(line, end="", file=sys.stderr, flush=True)
        process.wait()
    finally:
        timer.cancel()
    result = []
    for chunk in args.chunks:
        row = {"chunk": chunk, **rows[chunk]}
        if timed_out.is_set() and row.get("error") == "no result":
            row["error"] = f"timed out after {args.peer_timeout:.0f} s"
        elif row.get("error") == "no result":
            row["error"] = f"no result (runner exited {process.returncode})"
        # no GPU here: the expected answer of a dry run, not a failure
        row["expected"] = str(row.get("error", "")).startswith("needs CUDA")
        result.append(row)
    return result


def cell(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="CustomVoice checkpoint (default: build one of --shape)")
    parser.add_argument("--shape", default="tiny", choices=sorted(tiny_models.TTS_SHAPES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--speaker", default="ryan")
    parser.add_argument("--language", default="english")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per system, after one warm-up")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 8], help="the peer's chunk sizes")
    parser.add_argument("--first-chunk-frames", type=int, help="ours (default: the engine's default)")
    parser.add_argument(
        "--cuda-graphs",
        default="default",
        choices=["default", "on", "off", "both"],
        help="ours: TtsEngine.load's default, with, without, or both (two rows)",
    )
    parser.add_argument("--peer-path", default=os.environ.get("GPU_PEER_PYTHONPATH"), help="the peer's PYTHONPATH")
    parser.add_argument("--peer-python", default=os.environ.get("GPU_PEER_PYTHON", sys.executable))
    parser.add_argument("--peer-timeout", type=float, default=300.0, help="seconds for the whole peer run")
    parser.add_argument("--json", type=Path, help="also write the JSON line to this file")
    args = parser.parse_args()

    model = args.model
    if model is None or not (model / "config.json").exists():
        model = model or scratch_dir("gpu-peers-") / "tts-custom-voice"
        print(f"building a {args.shape} CustomVoice checkpoint in {model} ...", file=sys.stderr, flush=True)
        tiny_models.BUILDERS["tts-custom-voice"](model, shape=args.shape)
    max_frames = max_frames_for(SENTENCE)

    rows = []
    for cuda_graphs in dict(default=[None], on=[True], off=[False], both=[True, False])[args.cuda_graphs]:
        print(f"measuring ours (cuda_graphs {cuda_graphs}) on {args.device} ...", file=sys.stderr, flush=True)
        try:
            rows.append(measure_ours(args, model, cuda_graphs))
        except Exception as error:  # at load
            traceback.print_exc()
            rows.append(dict(system=f"ours (cuda_graphs {cuda_graphs})", error=f"{type(error).__name__}: {error}"))
        print("OURS " + json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"measuring {PEER} (chunk sizes {args.chunks}) ...", file=sys.stderr, flush=True)
    try:
        peer_rows = measure_peer(args, model, max_frames)
    except Exception as error:
        peer_rows = [dict(chunk=chunk, error=f"{type(error).__name__}: {error}") for chunk in args.chunks]
    rows += [dict(system=f"{PEER} chunk {row.pop('chunk')}", **row) for row in peer_rows]

    print(
        f"\n{args.device} {args.dtype}; {model}; {len(SENTENCE)} characters, at most {max_frames} frames "
        f"({max_frames / 12.5:.1f} s); speaker {args.speaker}, {args.language}; medians of {args.runs} after a warm-up"
    )
    header = ("system", "first audio s", "compute s per s of speech", "audio s", "load s", "GPU MiB", "error")
    print(" | ".join(header))
    for row in rows:
        values = [row.get(k) for k in ("first_audio_s", "compute_per_speech_s", "audio_s", "load_s")]
        print(
            " | ".join(
                [row["system"], *map(cell, values), cell(row.get("gpu_mib"), 0), str(row.get("error", "")) or "-"]
            )
        )
    line = json.dumps(
        dict(
            bench="gpu-peers",
            device=args.device,
            dtype=args.dtype,
            model=str(model),
            characters=len(SENTENCE),
            max_frames=max_frames,
            runs=args.runs,
            rows=rows,
        )
    )
    print(line)
    if args.json:
        args.json.write_text(line + "\n")
    return 1 if any(row.get("error") and not row.get("expected") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
