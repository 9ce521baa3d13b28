"""Streaming vs one decode: time from audio-stop to the final transcript, side by side in one run.

An utterance goes to the ASR server (in this process, over a unix socket) in two ways: at real-time
pace, as a satellite streams it, and all at once, as a recorded file arrives. The same loaded model
then decodes the whole utterance once on its inference thread (`AsrEngine.decode`, the same prompt and
output length): the wait for the final transcript should cost at most TARGET_RATIO times that one
decode, in both ways; streaming's partials must not delay it. The official `transcribe` of the same
audio is printed beside them.

Random weights never stop on their own: they would always run to the output cap (12 tokens per second
of audio), which no trained model does. By default the cap is set to a realistic output length
(--tokens-per-second 4, about what English speech gives) for every path alike.

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

TARGET_RATIO = 1.2


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

    async def official() -> float:
        started = time.monotonic()
        await app.manager.run(app.preload_key, lambda engine: official_transcribe(engine, audio, "", "English"))
        return time.monotonic() - started

    async def one_decode() -> float:
        def job(engine):
            engine.decode(audio, engine.prompt("", "English"), [], max_new_tokens=model_io.max_new_tokens_for(seconds))

        seconds = len(audio) / model_io.SAMPLE_RATE
        started = time.monotonic()
        await app.manager.run(app.preload_key, job)
        return time.monotonic() - started

    async def streamed(realtime: bool) -> tuple[float, int]:
        from wyoming.audio import AudioStop

        async with AsyncClient.from_uri(uri) as client:
            await client.write_event(Transcribe(language="en").event())
            await send_audio(client, pcm, realtime=realtime, stop=False)
            stop_sent = time.monotonic()
            await client.write_event(AudioStop().event())
            events = await read_until(client, "transcript", timeout=3600)
            latency = time.monotonic() - stop_sent
            await read_until(client, "transcript-stop", timeout=60)
        return latency, sum(e.type == "transcript-chunk" for e in events)

    await official()  # warm-up
    figures = {"real-time pace": [], "all at once": [], "one decode": [], "official transcribe": []}
    for i in range(args.repeats):
        for name, realtime in (("real-time pace", True), ("all at once", False)):
            latency, n_chunks = await streamed(realtime)
            figures[name].append(latency)
            print(f"run {i + 1}: {name}: final transcript {latency:.3f} s after audio-stop ({n_chunks} partials)")
        figures["one decode"].append(await one_decode())
        figures["official transcribe"].append(await official())
        print(f"run {i + 1}: one decode {figures['one decode'][-1]:.3f} s", flush=True)
    base = statistics.median(figures["one decode"])
    print(f"\n{args.seconds:g} s utterance, --chunk-seconds {args.chunk_seconds:g}, medians of {args.repeats}:")
    worst = 0.0
    for name, values in figures.items():
        ratio = statistics.median(values) / base
        if name in ("real-time pace", "all at once"):
            worst = max(worst, ratio)
        print(f"  {name}: {ratio:.2f} x one decode")
    verdict = "PASS" if worst <= TARGET_RATIO else "FAIL"
    print(f"  target: the final transcript within {TARGET_RATIO} x one decode: {verdict}")
    await server.stop()
    await app.manager.close()
    return 0 if worst <= TARGET_RATIO else 1


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
