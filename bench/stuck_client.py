"""A client that never reads, and another room: side by side in one run, through the TTS server (gateway and
worker as real processes, TCP, tiny checkpoints).

Prints the other room's first audio alone and 8 s after a client with a 4 KiB receive buffer asked for a
95-sentence reading and stopped reading (target: at most 2x), and how long the stuck request's worker
lives with `--write-timeout 5 --idle-unload 2` (target: within 5 + 2 + 5 s of the request).

    script/bench stuck-client [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import tiny_models  # noqa: E402
from wyoming_helpers import (  # noqa: E402
    READING,
    children,
    first_audio,
    free_port,
    never_reading_client,
    scratch_dir,
    spawn_server,
    stop_server,
    tts_args,
)

TARGET = 2.0


async def server(models: Path, voices: Path, workdir: Path, *extra: str):
    port = free_port()
    uri = f"tcp://127.0.0.1:{port}"
    process = await spawn_server(
        "wyoming_qwen_tts", uri, workdir / f"tts-{port}.log", *tts_args(models, voices, *extra)
    )
    return process, port, uri


async def run(repeats: int) -> int:
    workdir = scratch_dir("bench-stuck-client-")
    models = workdir / "models"
    for kind in ("custom_voice", "base", "voice_design"):
        tiny_models.build_tts(models / f"tts-{kind.replace('_', '-')}", shape="tiny", kind=kind)
    voices = workdir / "voices"
    voices.mkdir()

    process, port, uri = await server(models, voices, workdir)
    try:
        await first_audio(uri, "Warm up.")
        alone = statistics.median([await first_audio(uri) for _ in range(repeats)])
        stuck = never_reading_client(port, "synthesize", {"text": READING})
        try:
            await asyncio.sleep(8.0)
            beside = statistics.median([await first_audio(uri) for _ in range(repeats)])
        finally:
            stuck.close()
    finally:
        await stop_server(process)

    process, port, uri = await server(
        models, voices, workdir, "--write-timeout", "5", "--idle-unload", "2", "--idle-exit", "0"
    )
    try:
        await first_audio(uri, "Warm up.")
        stuck = never_reading_client(port, "synthesize", {"text": READING})
        sent = time.monotonic()
        try:
            while children(process.pid) and time.monotonic() - sent < 120:
                await asyncio.sleep(0.1)
            worker_lived = time.monotonic() - sent
        finally:
            stuck.close()
    finally:
        await stop_server(process)

    ratio = beside / alone
    print("TTS, tiny checkpoints, a client with a 4 KiB receive buffer that never reads a 95-sentence reading")
    print(f"other room's first audio: alone {alone:.3f} s, 8 s after the stuck request {beside:.3f} s")
    print(f"  beside / alone: {ratio:.2f} (target <= {TARGET:g}) {'met' if ratio <= TARGET else 'NOT met'}")
    print(f"worker of the stuck request, --write-timeout 5 --idle-unload 2: gone after {worker_lived:.1f} s")
    print(f"  (target <= 12 s) {'met' if worker_lived <= 12 else 'NOT met'}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    return asyncio.run(run(args.repeats))


if __name__ == "__main__":
    sys.exit(main())
