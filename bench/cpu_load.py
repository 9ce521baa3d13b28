"""A busy machine: our CPU figures quiet and beside a multi-threaded neighbour, for each thread setting,
side by side in one run.

The neighbour is what a home server runs next to us: another process doing 2-thread matrix products
with PyTorch's default (spinning) OpenMP threads, like our own other server synthesizing. OpenMP reads
its settings once, when torch is imported, so each setting is a resident process of its own with the
engine loaded. The processes take turns, in a new order each round: these machines share their memory
bandwidth and caches with other tenants, and their speed drifts by 15% from one minute to the next, so
settings measured one after the other compare the drift, not the settings. Turns of the same round are
paired, and each setting's ratio to the first is the median of its paired ratios.
- TTS: seconds of compute per second of speech (`--frames` frames of one sentence, `--quantize int8`);
- ASR: one decode of 8 s of speech-like audio to 32 tokens.
It prints, per setting, both figures quiet and loaded, the ratio loaded/quiet (target: at most 2), and
the paired ratios to the first setting.

A setting is THREADS:WAIT, WAIT one of the servers' `--cpu-wait` values (`brief:SPINS` sets libgomp's
spin count, GOMP_SPINCOUNT), or `default`: PyTorch's own threads (spin 300,000 turns, then sleep).
`--cpu-wait active` cannot take turns: its idle threads spin on for minutes and would load the others.

    script/bench cpu-load [--shape real-0.6b] [--settings 2:passive,2:brief:1000,2:default] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SETTINGS = "2:passive,2:brief:1000,2:brief,2:default"
TARGET_LOADED_RATIO = 2.0
NEIGHBOUR = (
    "import torch\ntorch.set_num_threads(2)\na = torch.randn(384, 384)\nwhile True:\n    a = torch.tanh(a @ a)\n"
)
OPENMP_WAIT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def child(args) -> int:
    """One setting, resident: load the engine, then measure once per `run` line on stdin."""
    if args.wait == "default":
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    else:
        from shared import cpu_threads

        cpu_threads.apply(args.threads, args.wait)
    import numpy as np
    import torch

    assert torch.get_num_threads() == args.threads, torch.get_num_threads()
    models = Path(args.models)
    if args.kind == "tts":
        from quantize import tts_once

        from wyoming_qwen_tts.engine import TtsEngine

        tts = TtsEngine.load(models / "tts-custom-voice", "tts", "cpu", torch.float32, quantize="int8")

        def measure() -> float:
            return tts_once(tts, args.frames)

    else:
        from wyoming_qwen_asr.engine import AsrEngine

        from wyoming_helpers import speechlike

        asr = AsrEngine.load(models / "asr", "cpu", torch.float32, quantize="int8")
        prompt = asr.prompt("", "English")
        seeds = iter(range(1_000_000))

        def measure() -> float:
            # a new utterance each turn (the encoder cache never hits), the same sequence in every setting
            pcm = speechlike(8.0, seed=next(seeds))
            audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768
            started = time.perf_counter()
            asr.decode(audio, prompt, [], max_new_tokens=32)
            return time.perf_counter() - started

    measure()  # the first run of a process pays one-time costs
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print("JSON " + json.dumps(measure()), flush=True)
    return 0


def without_openmp_wait() -> dict:
    return {k: v for k, v in os.environ.items() if k not in OPENMP_WAIT}


class Resident:
    """A child process of one setting, waiting for its turns."""

    def __init__(self, setting: str, kind: str, args) -> None:
        self.setting = setting
        threads, wait = setting.split(":", 1)
        policy, _, spins = wait.partition(":")
        env = without_openmp_wait()
        if spins:
            env["GOMP_SPINCOUNT"] = spins  # kept by cpu_threads.apply for brief
        command = [sys.executable, __file__, "--child", "--kind", kind, "--models", str(args.models)]
        command += ["--threads", threads, "--wait", policy, "--frames", str(args.frames)]
        self.log = tempfile.TemporaryFile("w+")  # the models' chatter; its tail if the child fails
        self.process = subprocess.Popen(
            command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        self._read("READY")

    def _read(self, prefix: str) -> str:
        while True:
            line = self.process.stdout.readline()
            if not line:
                self.log.seek(0)
                raise RuntimeError(
                    f"the {self.setting} child exited ({self.process.wait()}):\n{self.log.read()[-3000:]}"
                )
            if line.startswith(prefix):
                return line[len(prefix) :]

    def measure(self) -> float:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return json.loads(self._read("JSON "))

    def close(self) -> None:
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.process.wait(timeout=60)
        self.log.close()


def rounds(residents: dict, count: int) -> dict:
    """`count` rounds of one turn per setting, in a new order each round: {setting: [seconds per round]}."""
    figures = {setting: [] for setting in residents}
    for index in range(count):
        order = list(residents)
        random.Random(index).shuffle(order)
        for setting in order:
            figures[setting].append(residents[setting].measure())
    return figures


def measure_kind(kind: str, settings: list, args) -> dict:
    """Quiet rounds, then the same beside the neighbour: {setting: {"quiet": [...], "loaded": [...]}}."""
    residents = {}
    try:
        for setting in settings:  # one at a time: each load takes the cores
            residents[setting] = Resident(setting, kind, args)
        quiet = rounds(residents, args.rounds)
        # PyTorch's default (spinning) threads, whatever the settings put in this environment
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=without_openmp_wait())
        try:
            time.sleep(2)
            loaded = rounds(residents, args.rounds)
        finally:
            neighbour.kill()
            neighbour.wait()
    finally:
        for resident in residents.values():
            resident.close()
    return {setting: {"quiet": quiet[setting], "loaded": loaded[setting]} for setting in settings}


def paired(values: list, base: list) -> float:
    return statistics.median(a / b for a, b in zip(values, base, strict=True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="real-0.6b")
    parser.add_argument("--models", help="a folder with asr/ and tts-custom-voice/ (default: built now)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--settings", default=SETTINGS, help=f"comma separated (default: {SETTINGS})")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="tts", help=argparse.SUPPRESS)
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
    settings = args.settings.split(",")
    print(f"CPUs usable: {len(os.sched_getaffinity(0))}; shape {args.shape}; neighbour: 2-thread matmul, spinning")
    print(f"{args.rounds} rounds per phase, settings taking turns in a new order each round; medians")
    worst = {}
    for kind, unit in (("tts", "s per s of speech"), ("asr", "s for 8 s of audio")):
        figures = measure_kind(kind, settings, args)
        base = figures[settings[0]]
        print(f"\n{kind.upper()} ({unit})")
        print(f"setting | quiet | loaded | loaded/quiet | quiet vs {settings[0]} | loaded vs {settings[0]}")
        for setting, f in figures.items():
            quiet, loaded = statistics.median(f["quiet"]), statistics.median(f["loaded"])
            worst[setting] = max(worst.get(setting, 0.0), loaded / quiet)
            print(
                f"{setting} | {quiet:.2f} | {loaded:.2f} | {loaded / quiet:.2f} | "
                f"{paired(f['quiet'], base['quiet']):.3f} | {paired(f['loaded'], base['loaded']):.3f}"
            )
    print(f"\ntarget: loaded/quiet at most {TARGET_LOADED_RATIO} for the servers' default (2:passive)")
    default = worst.get("2:passive")
    return 1 if default is None or default > TARGET_LOADED_RATIO else 0


if __name__ == "__main__":
    sys.exit(main())
