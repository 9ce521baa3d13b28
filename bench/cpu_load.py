"""A busy machine: our CPU figures quiet and beside a multi-threaded neighbour, for each thread setting,
side by side in one run.

The neighbour is what a home server runs next to us: another process doing 2-thread matrix products
with PyTorch's default (spinning) OpenMP threads, like our own other server synthesizing. Each setting
runs in a process of its own, because OpenMP reads its settings once, when torch is imported:
- TTS: seconds of compute per second of speech (`--frames` frames of one sentence, `--quantize int8`);
- ASR: one decode of 8 s of speech-like audio to 32 tokens.
It prints, per setting, both figures quiet and loaded and the ratio loaded/quiet (target: at most 2),
and each quiet figure against the spinning default's.

    script/bench cpu-load [--shape real-0.6b] [--frames 24] [--repeats 2] [--models DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SETTINGS = ((2, "active"), (2, "brief"), (2, "passive"), (1, "brief"))
TARGET_LOADED_RATIO = 2.0
NEIGHBOUR = (
    "import torch\ntorch.set_num_threads(2)\na = torch.randn(384, 384)\nwhile True:\n    a = torch.tanh(a @ a)\n"
)


def child(args) -> int:
    """One setting: load both engines, measure quiet, start the neighbour, measure again."""
    from shared import cpu_threads

    cpu_threads.apply(args.threads, args.wait)
    import numpy as np
    import torch
    from quantize import time_asr, time_tts

    from wyoming_qwen_asr.engine import AsrEngine
    from wyoming_qwen_tts.engine import TtsEngine

    from wyoming_helpers import speechlike

    assert torch.get_num_threads() == args.threads, torch.get_num_threads()
    models = Path(args.models)
    tts = TtsEngine.load(models / "tts-custom-voice", "tts", "cpu", torch.float32, quantize="int8")
    asr = AsrEngine.load(models / "asr", "cpu", torch.float32, quantize="int8")
    audios = [np.frombuffer(speechlike(8.0, seed=s), dtype=np.int16).astype(np.float32) / 32768 for s in range(2)]
    figures = {}
    for load in ("quiet", "loaded"):
        neighbour = None
        if load == "loaded":
            neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env={**os.environ, "OMP_WAIT_POLICY": ""})
            time.sleep(2)
        try:
            figures[f"tts_{load}"] = time_tts(tts, args.frames, args.repeats)
            figures[f"asr_{load}"] = statistics.median(time_asr(asr, audios, 32) for _ in range(args.repeats))
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
    print("JSON " + json.dumps(figures), flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="real-0.6b")
    parser.add_argument("--models", help="a folder with asr/ and tts-custom-voice/ (default: built now)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--settings",
        default=",".join(f"{threads}:{wait}" for threads, wait in SETTINGS),
        help="THREADS:WAIT pairs to measure, comma separated (default: all four)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--wait", default="passive", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    import tiny_models
    from wyoming_helpers import scratch_dir

    if args.models is None:
        models = scratch_dir("bench-cpu-load-")
        tiny_models.build_asr(models / "asr", shape=args.shape)
        tiny_models.build_tts(models / "tts-custom-voice", shape=args.shape)
        args.models = str(models)
    print(f"CPUs usable: {len(os.sched_getaffinity(0))}; shape {args.shape}; neighbour: 2-thread matmul, spinning")
    rows = {}
    settings = [(int(item.split(":")[0]), item.split(":")[1]) for item in args.settings.split(",")]
    for threads, wait in settings:
        command = [sys.executable, __file__, "--child", "--models", args.models, "--threads", str(threads)]
        command += ["--wait", wait, "--frames", str(args.frames), "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("JSON ")]
        if done.returncode != 0 or not lines:
            print(f"{threads} threads, {wait}: failed\n{done.stderr[-2000:]}")
            continue
        rows[(threads, wait)] = json.loads(lines[-1][5:])
        print(f"{threads} threads, {wait}: {rows[(threads, wait)]}", flush=True)
    base = rows.get(settings[0])
    print("\nsetting | TTS s/s quiet | loaded | loaded/quiet | ASR s quiet | loaded | loaded/quiet | quiet vs 2 active")
    for (threads, wait), r in rows.items():
        tts_ratio, asr_ratio = r["tts_loaded"] / r["tts_quiet"], r["asr_loaded"] / r["asr_quiet"]
        against = "-"
        if base:
            against = f"TTS {r['tts_quiet'] / base['tts_quiet']:.2f}, ASR {r['asr_quiet'] / base['asr_quiet']:.2f}"
        print(
            f"{threads} threads, {wait} | {r['tts_quiet']:.2f} | {r['tts_loaded']:.2f} | {tts_ratio:.2f} | "
            f"{r['asr_quiet']:.2f} | {r['asr_loaded']:.2f} | {asr_ratio:.2f} | {against}"
        )
    print(f"target: loaded/quiet at most {TARGET_LOADED_RATIO} for the default (2 threads, passive)")
    default = rows.get((2, "passive"))
    if default is None:
        return 1
    worst = max(default["tts_loaded"] / default["tts_quiet"], default["asr_loaded"] / default["asr_quiet"])
    return 0 if worst <= TARGET_LOADED_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
