"""Our CPU speed against two GGML runtimes, side by side in one run, on the same random checkpoints at the real
Qwen3 0.6B shapes, each peer's copy made by its own converter (bench/peers/cpu_setup.sh):

  - TTS, the same sentence to the same 64-frame cap (5.12 s of audio; random weights never stop earlier),
    speaker ryan: ours (the server's load and `engine.stream`) against qwentts.cpp (GGUF Q8_0 talker and codec,
    through realtimetts-qwen-native-cpu), streaming in 2-frame chunks and in its native default chunks.
    Figures: compute seconds per second of audio, seconds to the first audio.
  - ASR, the same 8 s speech-like utterance (tests/wyoming_helpers.speechlike), at most 32 tokens, greedy,
    English: ours (the server's load and `engine.decode`) against CrispASR (its recommended Q4_K file, and
    Q8_0). Figures: seconds for the utterance, and for one token (audio encoder and prefill alone).

Every system runs in a process of its own, with the same thread cap (--threads: OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS, MKL_NUM_THREADS, and each runtime's own setting: ours the server's `--threads`, which
caps torch, with the server's default `--cpu-wait passive`; the peers with their own defaults otherwise),
loads, warms up once and measures once; the systems take turns, repeat after repeat, so a burst of other
load hits them alike. The table gives medians over the repeats, and for each system `foreign`, the largest
share of the cores that other processes used during one of its runs: with every core busy, each of these
runtimes slows down several times beside another busy process, so only rows with foreign near 0 measure
the runtime.

Targets: TTS compute per second of audio at most 0.8x qwentts.cpp's (2-frame streaming), first audio at most
0.8 s, ASR at most 0.8x CrispASR Q4_K.

    script/bench cpu-peers [--threads 2] [--repeats 4] [--work DIR] [--skip-setup] [--json FILE]

The first run sets up (bench/peers/cpu_setup.sh; QWENTTS_SRC and CRISPASR_SRC name git directories of the
peers' repositories, whose converters it uses): network, about 12 GB under --work, 2 to 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from wyoming_helpers import speechlike  # noqa: E402

PEERS = ROOT / "bench" / "peers"
SENTENCE = "The weather tomorrow will be mild and sunny, with light rain expected in the evening."
FRAMES = 64  # 5.12 s of audio at 12.5 frames per second
ASR_SECONDS = 8.0
ASR_TOKENS = 32  # about 4 tokens per second of speech, as bench/quantize.py caps it
TTS_RATIO_TARGET = 0.8
FIRST_AUDIO_TARGET = 0.8
ASR_RATIO_TARGET = 0.8
QUIET = 0.05  # foreign shares of the quiet reference runs were at most 0.04
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Job:
    """One system on one task: a row of the table, measured once per repeat in a fresh process."""

    key: str
    task: str  # tts or asr
    system: str
    format: str
    command: List[str]
    runs: list = field(default_factory=list)  # the runners' run records, with the repeat and load time
    errors: List[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # what the runner says of itself (version, format, ...)


def jobs_for(work: Path, threads: int, audio: Path) -> List[Job]:
    ours = [str(ROOT / ".venv" / "bin" / "python"), str(PEERS / "cpu_ours_run.py")]
    qwentts = [str(work / "venv-qwentts" / "bin" / "python"), str(PEERS / "cpu_qwentts_run.py")]
    crispasr = [str(work / "venv-crispasr" / "bin" / "python"), str(PEERS / "cpu_crispasr_run.py")]
    checkpoints, qwentts_models = work / "checkpoints", work / "qwentts" / "models"
    cap = ["--threads", str(threads), "--runs", "1"]
    tts = ["--text", SENTENCE, "--frames", str(FRAMES), *cap]
    asr = ["--audio", str(audio), "--tokens", str(ASR_TOKENS), *cap]
    qwentts_files = ["--talker", str(qwentts_models / "qwen-talker-0.6b-customvoice-Q8_0.gguf")]
    qwentts_files += ["--codec", str(qwentts_models / "qwen-tokenizer-12hz-Q8_0.gguf")]
    crispasr_model = work / "crispasr" / "models" / "qwen3-asr-0.6b-{}.gguf"
    return [
        Job("ours-asr", "asr", "ours", "", [*ours, "asr", "--model", str(checkpoints / "asr"), *asr]),
        Job(
            "crispasr-q4_k",
            "asr",
            "CrispASR, Q4_K (its recommended file)",
            "GGUF Q4_K, audio tower Q8_0",
            [*crispasr, "--model", str(crispasr_model).format("q4_k"), *asr],
        ),
        Job(
            "crispasr-q8_0",
            "asr",
            "CrispASR, Q8_0",
            "GGUF Q8_0",
            [*crispasr, "--model", str(crispasr_model).format("q8_0"), *asr],
        ),
        Job("ours-tts", "tts", "ours", "", [*ours, "tts", "--model", str(checkpoints / "tts-custom-voice"), *tts]),
        Job(
            "qwentts-2",
            "tts",
            "qwentts.cpp, streaming 2-frame chunks",
            "GGUF Q8_0 talker and codec",
            [*qwentts, *qwentts_files, "--stream-frames", "2", *tts],
        ),
        Job(
            "qwentts-0",
            "tts",
            "qwentts.cpp, its default chunks",
            "GGUF Q8_0 talker and codec",
            [*qwentts, *qwentts_files, "--stream-frames", "0", *tts],
        ),
    ]


def write_audio(path: Path) -> None:
    """The utterances of the ASR runs (16 kHz float32 rows, through int16 as a client sends them): a warm-up,
    the measured one, the one decoded for a single token."""
    rows = [np.frombuffer(speechlike(ASR_SECONDS, seed=seed), dtype=np.int16) for seed in range(3)]
    np.save(path, np.stack(rows).astype(np.float32) / 32768.0)


def run_job(job: Job, threads: int, timeout: float, repeat: int) -> Optional[dict]:
    """One process of `job`; its runs join job.runs. Returns its result line, or None (error kept)."""
    # QWEN_*: the servers' options (tests/wyoming_helpers sets some for the tests): ours runs at its defaults
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("QWEN_")}
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    env.update(PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    try:
        done = subprocess.run(job.command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        job.errors.append(f"repeat {repeat}: timed out after {timeout:.0f} s")
        return None
    results = [line[len("RESULT ") :] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(results[-1]) if results else {"error": f"no result (exit {done.returncode})"}
    if "error" in result:
        job.errors.append(f"repeat {repeat}: {result['error']}")
        print(done.stderr[-3000:], file=sys.stderr)
        return None
    job.details.update({k: v for k, v in result.items() if k not in ("runs", "load_s", "memory_mib", "packing_s")})
    memory = result.get("memory_mib") or {}
    per_process = dict(
        load_s=result.get("load_s"),
        packing_s=result.get("packing_s"),
        rss_mib=memory.get("rss"),
        anon_mib=memory.get("anonymous"),
        peak_mib=memory.get("peak"),
    )
    job.runs += [dict(run, repeat=repeat, **per_process) for run in result["runs"]]
    return result


def median(runs: list, key: str) -> Optional[float]:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def summary(job: Job) -> dict:
    runs = job.runs
    figures = dict(measured=len(runs), load_s=median(runs, "load_s"), packing_s=median(runs, "packing_s"))
    figures.update(
        rss_mib=median(runs, "rss_mib"), anon_mib=median(runs, "anon_mib"), peak_mib=median(runs, "peak_mib")
    )
    figures["foreign_max"] = max((run["foreign"] for run in runs), default=None)
    if job.task == "tts":
        for run in runs:
            run["compute_per_audio_s"] = run["total_s"] / run["audio_s"] if run["audio_s"] else None
        figures.update(
            compute_per_audio_s=median(runs, "compute_per_audio_s"),
            first_audio_s=median(runs, "first_audio_s"),
            audio_s=median(runs, "audio_s"),
        )
    else:
        figures.update(asr_s=median(runs, "total_s"), prefill_s=median(runs, "prefill_s"))
        figures["tokens"] = median(runs, "tokens")
    return figures


def cell(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def memory_cell(row: dict) -> str:
    """The process's memory after its runs: resident (its anonymous part, the peak resident)."""
    if row.get("rss_mib") is None:
        return "-"
    return f"{row['rss_mib']:.0f} ({row['anon_mib']:.0f}, {row['peak_mib']:.0f})"


def foreign_cell(value) -> str:
    return "-" if value is None else f"{value:.2f}" + (" (noisy)" if value > QUIET else "")


def ratio(ours: Optional[float], peer: Optional[float]) -> Optional[float]:
    return ours / peer if ours is not None and peer else None


def verdict(value: Optional[float], target: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value <= target else "NOT met"


def host_line(threads: int, repeats: int) -> str:
    model = platform.processor() or "?"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"host: {os.cpu_count()} cores, {model}; threads {threads}; {repeats} repeats, one measured run each"


def measure(jobs: List[Job], args) -> None:
    """Every job once per repeat, in turn; a line on stderr after each process."""
    for repeat in range(1, args.repeats + 1):
        for job in jobs:
            if run_job(job, args.threads, args.timeout, repeat) is None:
                note = job.errors[-1]
            else:
                run = job.runs[-1]
                seconds = run["total_s"] if job.task == "asr" else run["total_s"] / run["audio_s"]
                note = f"{seconds:.2f} s{'' if job.task == 'asr' else ' per s of audio'}, foreign {run['foreign']:.2f}"
            print(f"[{repeat}/{args.repeats}] {job.key}: {note}", file=sys.stderr, flush=True)


def targets_of(figures: dict) -> dict:
    """The three figures the targets are set on, measured in this run, each with its target."""
    ours_tts, ours_asr = figures["ours-tts"], figures["ours-asr"]
    return {
        "TTS compute per s of audio, ours / qwentts.cpp 2-frame streaming": (
            ratio(ours_tts["compute_per_audio_s"], figures["qwentts-2"]["compute_per_audio_s"]),
            TTS_RATIO_TARGET,
        ),
        "first audio, ours, s": (ours_tts["first_audio_s"], FIRST_AUDIO_TARGET),
        "ASR, ours / CrispASR Q4_K": (ratio(ours_asr["asr_s"], figures["crispasr-q4_k"]["asr_s"]), ASR_RATIO_TARGET),
    }


def print_report(jobs: List[Job], figures: dict, targets: dict, head: List[str]) -> None:
    print("\n" + "\n".join(head))
    ours_tts = next(job for job in jobs if job.key == "ours-tts")
    print(
        f"\nTTS: {len(SENTENCE)} characters to {FRAMES} frames ({FRAMES / 12.5:.2f} s of audio), speaker ryan; "
        f"ours streams with a first chunk of {cell(ours_tts.details.get('first_chunk_frames'))} frame(s)"
    )
    print(
        "system | format | compute s per s of audio | first audio s | audio s | load s | RSS MiB (anonymous, peak) "
        "| foreign | runs | error"
    )
    for job in (job for job in jobs if job.task == "tts"):
        row = figures[job.key]
        values = [row["compute_per_audio_s"], row["first_audio_s"], row["audio_s"], row["load_s"]]
        print(" | ".join([job.system, job.format, *map(cell, values), memory_cell(row), *row_end(job, row)]))
    print(f"\nASR: {ASR_SECONDS:g} s speech-like audio, at most {ASR_TOKENS} tokens, greedy, English")
    print(
        "system | format | seconds | 1 token s | tokens | load s | RSS MiB (anonymous, peak) | foreign | runs | error"
    )
    for job in (job for job in jobs if job.task == "asr"):
        row = figures[job.key]
        values = [cell(row["asr_s"]), cell(row["prefill_s"]), cell(row["tokens"], 0), cell(row["load_s"])]
        print(" | ".join([job.system, job.format, *values, memory_cell(row), *row_end(job, row)]))
    packed = [(job, figures[job.key]) for job in jobs if figures[job.key].get("packing_s") is not None]
    for job, row in packed:
        print(
            f"{job.system} {job.task}: fbgemm packing after the load, in the background while serving: "
            f"{cell(row['packing_s'])} s"
        )

    print("\nmeasured in this run (medians), against the targets:")
    for name, (value, target) in targets.items():
        print(f"  {name}: {cell(value)} (target <= {target}) {verdict(value, target)}")
    ratio_first = ratio(figures["ours-tts"]["first_audio_s"], figures["qwentts-2"]["first_audio_s"])
    print(f"  first audio, ours / qwentts.cpp 2-frame streaming: {cell(ratio_first)}")
    noisy = [job.key for job in jobs if (figures[job.key]["foreign_max"] or 0) > QUIET]
    if noisy:
        print(f"  other processes kept more than {QUIET:.0%} of the cores busy during runs of {', '.join(noisy)}:")
        print("  those figures measure the machine's load as much as the runtime")


def row_end(job: Job, row: dict) -> List[str]:
    return [foreign_cell(row["foreign_max"]), cell(row["measured"]), "; ".join(job.errors) or "-"]


def write_json(path: Path, args, head: List[str], jobs: List[Job], figures: dict, targets: dict) -> None:
    """Every run of every system, the medians and the targets."""
    result = dict(
        bench="cpu-peers",
        head=head,
        threads=args.threads,
        repeats=args.repeats,
        sentence=SENTENCE,
        frames=FRAMES,
        asr_seconds=ASR_SECONDS,
        asr_tokens=ASR_TOKENS,
        targets={name: dict(value=value, target=target) for name, (value, target) in targets.items()},
        jobs={
            job.key: dict(
                task=job.task,
                system=job.system,
                format=job.format,
                details=job.details,
                errors=job.errors,
                runs=job.runs,
                medians=figures[job.key],
            )
            for job in jobs
        },
    )
    path.write_text(json.dumps(result, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="every runtime's thread cap")
    parser.add_argument("--repeats", type=int, default=4, help="measured runs per system, taking turns")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("CPU_PEERS_WORK", "/tmp/wyoming-qwen-cpu-peers")),
        help="environments, checkpoints and converted files (bench/peers/cpu_setup.sh)",
    )
    parser.add_argument("--skip-setup", action="store_true", help="use --work as it is")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per process")
    parser.add_argument("--json", type=Path, help="write every run, the medians and the targets to this file")
    args = parser.parse_args()
    work = args.work.resolve()

    if not args.skip_setup:
        setup = subprocess.run(["bash", str(PEERS / "cpu_setup.sh")], env=dict(os.environ, CPU_PEERS_WORK=str(work)))
        if setup.returncode:
            print(f"setup failed (exit {setup.returncode})", file=sys.stderr)
            return 2
    audio = work / "asr-audio.npy"
    jobs = jobs_for(work, args.threads, audio)
    needed = {part for job in jobs for part in job.command if part.startswith(str(work)) and part != str(audio)}
    missing = sorted(part for part in needed if not Path(part).exists())
    if missing:
        print(f"not set up: {', '.join(missing)}; run without --skip-setup", file=sys.stderr)
        return 2
    write_audio(audio)

    started = time.monotonic()
    measure(jobs, args)
    figures = {job.key: summary(job) for job in jobs}
    for job in jobs:
        job.format = job.details.get("format", job.format)
    targets = targets_of(figures)
    versions = work / "versions.txt"
    head = [host_line(args.threads, args.repeats)]
    head += [f"  {line}" for line in (versions.read_text().splitlines() if versions.exists() else [])]
    print_report(jobs, figures, targets, head)
    print(f"({time.monotonic() - started:.0f} s)")

    if args.json:
        write_json(args.json, args, head, jobs, figures, targets)
    met = all(value is not None and value <= target for value, target in targets.values())
    return 0 if met and not any(job.errors for job in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
