"""The first command after idle, for each idle setting, against a warm one, side by side in one run.

For each checkpoint shape (random weights built offline; the real shapes in bfloat16, as published), real
gateway processes on unix sockets (`--device cpu`, the default int8 on a CPU, int8 caches already written as
after a model's first start, files in the page cache), each server in turn:
  - speech-to-text: a 3-second spoken command (espeak-ng) at real-time pace, `--vad on` as users run it;
    seconds from `audio-stop` to the transcript;
  - text-to-speech: one sentence; seconds from the request to the first audio (the client then leaves);
  - the first command from each idle tier against a warm one (the same server, its model loaded and its
    kernels packed): after the standby (the default, `--idle-unload` shortened to a few seconds to stand in
    for its 300), after a full exit (`--idle-exit 0`: the worker is started again), with `--spare-worker`;
  - resident memory of the gateway and its worker, split into anonymous and file-backed (smaps_rollup), in
    each state: no worker, loaded, in standby, a spare worker;
  - the worker's start after a full exit, from the logs: spawn, imports, the engine's load (weights,
    int8 from the cache), the background packing of fbgemm's kernels, the first request.
Targets (issue 28; real 0.6B shape, 2 cores, int8, through the gateway): the first command after the
standby at most 1.0 s after a warm one (ASR transcript, TTS first audio); the standby's anonymous memory at
most 400 MiB per server, gateway included (file-backed pages are reported, not counted); after a full exit at
most 4 s after a warm one; loaded RSS at most 1.6 GB per server; the engine's load at most 1 s.

The servers run on this environment's torch unless `--cpu-torch WHEEL` names torch's CPU build (what the
Docker CPU images install; `pip download torch --no-deps --index-url https://download.pytorch.org/whl/cpu`):
its import holds about 120 MiB less anonymous memory than a CUDA build's, which every worker keeps.

    script/bench cold-start [--shapes tiny real-0.6b] [--rounds 2] [--cpu-torch WHEEL] [--warned]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from shared.file_pages import anonymous_mib  # noqa: E402

import tiny_models  # noqa: E402
from wyoming_helpers import children, espeak, read_until, scratch_dir, send_audio, spawn_server  # noqa: E402

COMMAND_SECONDS = 3.0
COMMAND = "Turn on the kitchen lights and close the blinds"
SENTENCE = "The kitchen lights are off now."
IDLE_UNLOAD = 4  # seconds: stands in for the default 300 (the same tier, reached sooner)
PEER_DELAY = 3.0  # --warned: the TTS request follows the command's audio-start by this much
TARGETS = dict(standby_extra=1.0, exit_extra=4.0, standby_anon_mib=400.0, loaded_rss_mib=1600.0, engine_load=1.0)

LOG_PATTERNS = {
    "ready": r"Worker pid \d+ ready ([\d.]+) s after spawn",
    "torch": r"Worker imported torch in ([\d.]+) s",
    "package": r"Worker imported torch in [\d.]+ s and \S+ in ([\d.]+) s",
    "from_pretrained": r"Qwen3-(?:ASR|TTS) .* in ([\d.]+) s",
    "quantize": r"Quantized \d+ linear layers of .* in ([\d.]+) s",
    "load": r"Loaded model \S+ in ([\d.]+) s",
    "packing": r"Prepared the kernels of model \S+ in [\d.]+ s \(\d+ matrices packed for fbgemm in ([\d.]+) s\)",
    "standby": r"Model \S+ in standby \(.*\): .* in ([\d.]+) s",
}


def cpu_line() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?"
    )
    flags = set(next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), []))
    isa = [name for name in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if name in flags]
    return f"{model}; {', '.join(isa) or 'no AVX2'}; {len(os.sched_getaffinity(0))} cores"


@dataclass
class Memory:
    """Resident MiB of the gateway and its worker (if any), anonymous and file-backed."""

    gateway: Tuple[float, float]
    worker: Optional[Tuple[float, float]] = None

    @property
    def anonymous(self) -> float:
        return self.gateway[0] + (self.worker[0] if self.worker else 0.0)

    @property
    def rss(self) -> float:
        return sum(self.gateway) + (sum(self.worker) if self.worker else 0.0)

    def __str__(self) -> str:
        worker = "no worker" if self.worker is None else f"worker {self.worker[0]:.0f} + {self.worker[1]:.0f}"
        return f"{self.anonymous:5.0f} anon (gateway {self.gateway[0]:.0f} + {self.gateway[1]:.0f} file, {worker} file)"


class Server:
    def __init__(self, module: str, args: List[str], workdir: Path, name: str) -> None:
        self.module, self.args, self.name = module, args, name
        self.uri = f"unix://{workdir}/{name}.sock"
        self.log_path = workdir / f"{name}.log"

    async def __aenter__(self) -> "Server":
        self.process = await spawn_server(self.module, self.uri, self.log_path, *self.args)
        return self

    async def __aexit__(self, *_exc) -> None:
        self.process.terminate()
        await self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def figures(self) -> Dict[str, float]:
        """The first value each pattern finds in the log (the first start's)."""
        found = {key: re.search(pattern, self.log()) for key, pattern in LOG_PATTERNS.items()}
        return {key: float(match.group(1)) for key, match in found.items() if match}

    def memory(self) -> Memory:
        workers = children(self.process.pid)
        return Memory(anonymous_mib(self.process.pid), anonymous_mib(workers[0]) if workers else None)

    def worker_parts(self) -> Dict[str, Tuple[float, float]]:
        """The worker's resident MiB by what its mappings hold: (resident, anonymous)."""
        workers = children(self.process.pid)
        return memory_parts(workers[0]) if workers else {}

    async def wait_for_log(self, text: str, count: int = 1, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            assert time.monotonic() < deadline, f"{text!r} never appeared {count} times in {self.log_path}"
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # the log line comes as the step ends; let its memory settle


def memory_parts(pid: int) -> Dict[str, Tuple[float, float]]:
    parts: Dict[str, List[float]] = {}
    current: List[float] = [0.0, 0.0]
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                fields = line.split()
                path = fields[5] if len(fields) > 5 else ""
                if ".so" in path:
                    name = "libraries"
                elif "wyoming-qwen-pages" in path:
                    name = "file pages of moved weights (packed int8, converted float)"
                elif path.endswith(".safetensors"):
                    name = f"checkpoint {Path(path).parent.name}/{Path(path).name}"
                elif path in ("", "[heap]"):
                    name = "anonymous (torch, Python, activations)"
                else:
                    name = "other"
                current = parts.setdefault(name, [0.0, 0.0])
            elif line.startswith("Rss:"):
                current[0] += int(line.split()[1]) / 1024
            elif line.startswith("Anonymous:"):
                current[1] += int(line.split()[1]) / 1024
    return {name: (rss, anon) for name, (rss, anon) in parts.items() if rss >= 1}


async def asr_command(uri: str, pcm: bytes, on_audio_start=None) -> float:
    """Seconds from audio-stop to the transcript, for a command streamed at real-time pace."""
    from wyoming.asr import Transcribe
    from wyoming.client import AsyncClient

    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Transcribe(language="en").event())
        if on_audio_start is not None:
            on_audio_start()
        await send_audio(client, pcm, realtime=True)
        stopped = time.monotonic()
        await read_until(client, "transcript", timeout=900)
        return time.monotonic() - stopped


async def tts_first_audio(uri: str) -> float:
    """Seconds from a `synthesize` to the first audio; then the client leaves (which stops the reply)."""
    from wyoming.client import AsyncClient
    from wyoming.tts import Synthesize

    async with AsyncClient.from_uri(uri) as client:
        started = time.monotonic()
        await client.write_event(Synthesize(text=SENTENCE).event())
        await read_until(client, "audio-chunk", timeout=900)
        return time.monotonic() - started


@dataclass
class ServerFigures:
    name: str
    cold_exit: float = 0.0  # the first request to a server without a worker
    warm: List[float] = field(default_factory=list)
    from_standby: List[float] = field(default_factory=list)
    from_spare: float = 0.0
    memory: Dict[str, Memory] = field(default_factory=dict)
    loaded_parts: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    log: Dict[str, float] = field(default_factory=dict)

    @property
    def warm_s(self) -> float:
        return statistics.median(self.warm)


async def measure_server(module: str, model_args: List[str], request, workdir: Path, tag: str, rounds: int):
    figures = ServerFigures(module.rsplit("_", 1)[-1].upper())
    # --int8-packing background is the servers' default; the test helpers imported here make `load` the
    # environment's default for the tests
    key_args = [*model_args, "--idle-unload", str(IDLE_UNLOAD), "--int8-packing", "background"]
    async with Server(module, key_args, workdir, f"{tag}-default") as server:
        await asyncio.sleep(0.5)
        figures.memory["no worker"] = server.memory()
        figures.cold_exit = await request(server.uri)
        figures.log = server.figures()
        if "fbgemm kernels once packed" in server.log():
            await server.wait_for_log("Prepared the kernels of model")
            figures.log = server.figures()
        for _ in range(2):
            figures.warm.append(await request(server.uri))
        figures.memory["loaded"] = server.memory()
        figures.loaded_parts = server.worker_parts()
        for round_ in range(1, rounds + 1):
            await server.wait_for_log("in standby (", count=server.log().count("in standby (") + 1)
            figures.memory[f"standby {round_}"] = server.memory()
            figures.from_standby.append(await request(server.uri))
            figures.warm.append(await request(server.uri))
        figures.log.setdefault("standby", server.figures().get("standby", float("nan")))
    spare_args = [*key_args, "--idle-exit", "0", "--spare-worker"]
    async with Server(module, spare_args, workdir, f"{tag}-spare") as server:
        await server.wait_for_log("Spare worker pid")
        figures.memory["spare worker"] = server.memory()
        figures.from_spare = await request(server.uri)
    return figures


async def measure(shape: str, workdir: Path, rounds: int, dtype: Optional[str]) -> List[ServerFigures]:
    models = workdir / shape
    asr_model = tiny_models.build_asr(models / "asr", shape=shape, dtype=dtype)
    tts_model = tiny_models.build_tts(models / "tts", shape=shape, dtype=dtype)
    write_int8_caches(asr_model, tts_model)
    command = spoken_command()

    async def asr_request(uri):
        return await asr_command(uri, command)

    asr = await measure_server(
        "wyoming_qwen_asr", ["--model", str(asr_model), "--vad", "on"], asr_request, workdir, f"asr-{shape}", rounds
    )
    tts = await measure_server(
        "wyoming_qwen_tts", ["--model", str(tts_model)], tts_first_audio, workdir, f"tts-{shape}", rounds
    )
    return [asr, tts]


def spoken_command() -> bytes:
    """COMMAND spoken, with 0.3 s of silence before it and silence after it up to COMMAND_SECONDS."""
    speech = espeak(COMMAND)
    lead = b"\0\0" * int(0.3 * 16000)
    tail = max(0, int(COMMAND_SECONDS * 16000) * 2 - len(lead) - len(speech))
    return lead + speech + b"\0" * tail


def write_int8_caches(asr_model: Path, tts_model: Path) -> None:
    """Load each model once with int8, so the measured starts read the cached int8 weights, as every start
    after a model's first does."""
    script = (
        "import sys\n"
        "from shared import lean_imports\n"
        "lean_imports.install()  # as a worker does (torchaudio on first use)\n"
        "import torch\n"
        "from wyoming_qwen_asr.engine import AsrEngine\n"
        "from wyoming_qwen_tts.engine import TtsEngine\n"
        "AsrEngine.load(sys.argv[1], 'cpu', torch.float32, quantize='int8')\n"
        "TtsEngine.load(sys.argv[2], sys.argv[2], 'cpu', torch.float32, quantize='int8')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(asr_model), str(tts_model)], cwd=ROOT, check=True)


def breakdown(log: Dict[str, float]) -> str:
    parts = []
    if "ready" in log:
        imports = log.get("torch", 0.0) + log.get("package", 0.0)
        parts.append(f"spawn {log['ready'] - imports:.2f}")
        parts.append(f"imports {imports:.2f} (torch {log.get('torch', float('nan')):.2f})")
    for key, label in (("from_pretrained", "weights"), ("quantize", "int8 from the cache"), ("load", "engine load")):
        if key in log:
            parts.append(f"{label} {log[key]:.2f}")
    if "packing" in log:
        parts.append(f"fbgemm packing {log['packing']:.2f} (in the background, while serving)")
    return ", ".join(parts)


def report(shape: str, servers: List[ServerFigures]) -> bool:
    ok = True
    print(f"\nshape '{shape}':")
    for s in servers:
        what = "audio-stop -> transcript" if s.name == "ASR" else "request -> first audio"
        warm = s.warm_s
        standby = max(s.from_standby)
        print(f"  {s.name} ({what}), warm {warm:.2f} s (median of {len(s.warm)}: {fmt(s.warm)}):")
        rows = (
            ("--idle-unload -1 (always loaded)", s.memory["loaded"], warm),
            ("default: standby after --idle-unload", s.memory["standby 1"], standby),
            ("--idle-exit 0 (full exit)", s.memory["no worker"], s.cold_exit),
            ("--idle-exit 0 --spare-worker", s.memory["spare worker"], s.from_spare),
        )
        print(f"    {'setting':<38} | idle MiB: anonymous (gateway + file, worker + file) | first command")
        for name, memory, seconds in rows:
            print(f"    {name:<38} | {memory!s:<52} | {seconds:6.2f} s ({seconds - warm:+.2f})")
        print(f"    from standby, each round: {fmt(s.from_standby)} s")
        for state in [k for k in s.memory if k.startswith("standby")]:
            print(f"    memory in {state}: {s.memory[state]}")
        print(f"    loaded RSS (gateway + worker): {s.memory['loaded'].rss:.0f} MiB; the worker's, by mapping:")
        for name, (rss, anon) in sorted(s.loaded_parts.items(), key=lambda item: -item[1][0]):
            print(f"      {rss:6.0f} MiB ({anon:.0f} anonymous) {name}")
        print(f"    worker start after a full exit (s): {breakdown(s.log)}")
        if "standby" in s.log:
            print(f"    entering standby took {s.log['standby']:.2f} s (in the background)")
        checks = {
            f"standby: first command at most warm + {TARGETS['standby_extra']:g} s": standby - warm
            <= TARGETS["standby_extra"],
            f"standby: anonymous at most {TARGETS['standby_anon_mib']:g} MiB (gateway included)": max(
                m.anonymous for k, m in s.memory.items() if k.startswith("standby")
            )
            <= TARGETS["standby_anon_mib"],
            f"full exit: first command at most warm + {TARGETS['exit_extra']:g} s": s.cold_exit - warm
            <= TARGETS["exit_extra"],
            f"loaded RSS at most {TARGETS['loaded_rss_mib']:g} MiB": s.memory["loaded"].rss
            <= TARGETS["loaded_rss_mib"],
            f"engine load at most {TARGETS['engine_load']:g} s": s.log.get("load", float("inf"))
            <= TARGETS["engine_load"],
        }
        for check, passed in checks.items():
            print(f"    {'met' if passed else 'NOT met'}: {check}")
            ok &= passed
    return ok


def fmt(values: List[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


async def warned(shape: str, workdir: Path, dtype: Optional[str]) -> None:
    """--warned: a TTS request PEER_DELAY s after its ASR partner's audio-start (--warm-peer), both cold
    (no worker), against the same again warm."""
    models = workdir / shape
    asr_model, tts_model = models / "asr", models / "tts"
    command = spoken_command()
    async with Server("wyoming_qwen_tts", ["--model", str(tts_model)], workdir, f"tts-warned-{shape}") as tts:
        peer = ["--model", str(asr_model), "--vad", "on", "--warm-peer", tts.uri]
        async with Server("wyoming_qwen_asr", peer, workdir, f"asr-peer-{shape}") as asr:
            cold = await warned_first_audio(asr.uri, tts.uri, command)
            warm = await warned_first_audio(asr.uri, tts.uri, command)
    print(f"  TTS request {PEER_DELAY:g} s after the ASR partner's audio-start (--warm-peer), both without")
    print(f"    a worker: first audio {cold:.2f} s against {warm:.2f} s warm ({cold / warm:.2f}x)")


async def warned_first_audio(asr_uri: str, tts_uri: str, command: bytes) -> float:
    audio_start = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(asr_command(asr_uri, command, lambda: audio_start.set_result(time.monotonic())))
    started = await audio_start
    await asyncio.sleep(max(0.0, started + PEER_DELAY - time.monotonic()))
    first = await tts_first_audio(tts_uri)
    await task
    return first


def use_torch_wheel(wheel: Path, workdir: Path) -> None:
    """The servers (and their workers) import torch from `wheel`, unpacked ahead of this environment's."""
    target = workdir / "torch-overlay"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))


def servers_torch() -> str:
    probe = "import torch; print(torch.__version__, 'CUDA build' if torch.version.cuda else 'CPU build')"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


async def run(args) -> int:
    workdir = scratch_dir("bench-cold-start-")
    if args.cpu_torch:
        use_torch_wheel(Path(args.cpu_torch), workdir)
    print(f"CPU: {cpu_line()}; the servers run torch {servers_torch()}")
    print(f"{COMMAND_SECONDS:g} s spoken command at real-time pace; --idle-unload {IDLE_UNLOAD} stands in for 300")
    ok = True
    for shape in args.shapes:
        dtype = None if shape == "tiny" else args.checkpoint_dtype
        print(f"\nmeasuring shape '{shape}' ({dtype or 'float32'} checkpoints) ...", file=sys.stderr, flush=True)
        servers = await measure(shape, workdir, args.rounds, dtype)
        ok &= report(shape, servers)
        if args.warned:
            await warned(shape, workdir, dtype)
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["tiny", "real-0.6b"], choices=sorted(tiny_models.ASR_SHAPES))
    parser.add_argument("--rounds", type=int, default=2, help="standby entries and first commands from it")
    parser.add_argument(
        "--checkpoint-dtype", default="bfloat16", help="of the real-shape checkpoints (the published ones are bfloat16)"
    )
    parser.add_argument("--cpu-torch", metavar="WHEEL", help="run the servers on this wheel of torch (a CPU build)")
    parser.add_argument("--warned", action="store_true", help="also a TTS request warned by its ASR partner")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
