"""Streaming vs batch: time from audio-stop to transcript, side by side in one run.

An 8-second utterance is streamed at real-time pace to the ASR server (in this process, over a unix
socket); the same loaded model then transcribes the whole utterance at once with the official
`transcribe`. The ratio streamed/batch is what counts (these machines are too noisy for bare times).

Random weights never stop on their own: they would always run to the output cap (12 tokens per second
of audio), which no trained model does. By default the cap is set to a realistic output length
(--tokens-per-second 4, about what English speech gives) for both paths alike.

    script/bench asr [--shape bench|real-0.6b|tiny] [--seconds 8] [--chunk-seconds 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tiny_models  # noqa: E402  (sets the offline environment)
from official import official_transcribe  # noqa: E402
from wyoming_helpers import read_until, scratch_dir, send_audio, speechlike, start_server  # noqa: E402

TARGET_RATIO = 0.5


async def run(args) -> int:
    import numpy as np
    from wyoming.asr import Transcribe
    from wyoming.client import AsyncClient

    from wyoming_qwen_asr import model_io
    from wyoming_qwen_asr.app import create_app
    from wyoming_qwen_asr.options import parse_args

    workdir = scratch_dir("bench-asr-")
    checkpoint = args.checkpoint
    if checkpoint is None:
        started = time.monotonic()
        checkpoint = tiny_models.build_asr(workdir / "asr", shape=args.shape)
        print(
            f"checkpoint: random Qwen3-ASR, shape '{args.shape}' {tiny_models.ASR_SHAPES[args.shape]} "
            f"(built in {time.monotonic() - started:.0f} s)"
        )
    if args.tokens_per_second > 0:
        model_io.TOKENS_PER_SECOND = args.tokens_per_second
        model_io.TOKEN_MARGIN = 1
        print(f"output length: {args.tokens_per_second} tokens per second of audio (emulating a trained model)")
    else:
        print("output length: the server's cap (random weights run to it)")

    uri = f"unix://{workdir}/asr.sock"
    app = create_app(
        parse_args(
            [
                "--uri",
                uri,
                "--model",
                str(checkpoint),
                "--device",
                "cpu",
                "--chunk-seconds",
                str(args.chunk_seconds),
                "--idle-unload",
                "-1",
            ]
        )
    )
    await app.manager.preload(app.preload_key)
    server = await start_server(uri, app)
    pcm = speechlike(args.seconds)
    audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0

    async def batch() -> float:
        started = time.monotonic()
        await app.manager.run(app.preload_key, lambda engine: official_transcribe(engine, audio, "", "English"))
        return time.monotonic() - started

    async def streamed() -> tuple[float, int]:
        async with AsyncClient.from_uri(uri) as client:
            await client.write_event(Transcribe(language="en").event())
            await send_audio(client, pcm, realtime=True, stop=False)
            stop_sent = time.monotonic()
            from wyoming.audio import AudioStop

            await client.write_event(AudioStop().event())
            events = await read_until(client, "transcript", timeout=3600)
            latency = time.monotonic() - stop_sent
            await read_until(client, "transcript-stop", timeout=60)
        return latency, sum(e.type == "transcript-chunk" for e in events)

    await batch()  # warm-up
    streamed_s, batch_s, chunks = [], [], []
    for i in range(args.repeats):
        latency, n_chunks = await streamed()
        streamed_s.append(latency)
        chunks.append(n_chunks)
        batch_s.append(await batch())
        print(
            f"run {i + 1}: streamed {latency:.3f} s after audio-stop ({n_chunks} chunks), "
            f"batch {batch_s[-1]:.3f} s, ratio {latency / batch_s[-1]:.2f}"
        )
    ratio = statistics.median(streamed_s) / statistics.median(batch_s)
    print(f"\n{args.seconds:g} s utterance at real-time pace, --chunk-seconds {args.chunk_seconds:g}:")
    print(
        f"  streamed final latency / batch transcribe latency = {ratio:.2f} "
        f"(medians of {args.repeats}; target <= {TARGET_RATIO})"
    )
    print(f"  {'PASS' if ratio <= TARGET_RATIO else 'FAIL'}")
    await server.stop()
    await app.manager.close()
    return 0 if ratio <= TARGET_RATIO else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="bench", choices=sorted(tiny_models.ASR_SHAPES))
    parser.add_argument("--checkpoint", type=Path, help="Use this checkpoint instead of building one")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--chunk-seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--debug", action="store_true", help="Log each streaming step")
    parser.add_argument(
        "--tokens-per-second", type=float, default=4.0, help="Output length to emulate (0: the server's cap)"
    )
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    for noisy in ("asyncio", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
