"""Time to first audio / time to full audio, side by side in one run, for
- a streamed three-sentence reply (synthesize-start, the text in small pieces as an LLM writes it,
  the compat synthesize, synthesize-stop), and
- the same text as one synthesize.

Random weights never stop on their own: they would always run to the generation cap (about 4x a
normal speaking rate). By default the cap is set to a realistic length (--frames-per-char 1.0, about
what English speech gives: 12.5 frames per second at ~13 characters per second), for both alike.

    script/bench tts [--shape bench|real-0.6b|tiny] [--repeats 2] [--no-frame-streaming]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tiny_models  # noqa: E402  (sets the offline environment)
from wyoming_helpers import scratch_dir, start_server  # noqa: E402

TEXT = (
    "The lights in the kitchen are off now. The front door is locked for the night. "
    "Sleep well and see you all tomorrow."
)
TARGET_STREAMED = 0.4


async def run(args) -> int:
    from wyoming.client import AsyncClient
    from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

    from wyoming_qwen_tts import engine as engine_module
    from wyoming_qwen_tts.app import create_app
    from wyoming_qwen_tts.options import parse_args

    workdir = scratch_dir("bench-tts-")
    started = time.monotonic()
    checkpoint = tiny_models.build_tts(workdir / "custom-voice", shape=args.shape)
    print(
        f"checkpoint: random Qwen3-TTS CustomVoice, shape '{args.shape}' {tiny_models.TTS_SHAPES[args.shape]} "
        f"(built in {time.monotonic() - started:.0f} s)"
    )
    if args.frames_per_char > 0:
        engine_module.FRAMES_PER_CHAR = args.frames_per_char
        engine_module.FRAMES_PER_WIDE_CHAR = args.frames_per_char
        engine_module.FRAME_MARGIN = 0
        print(f"speech length: {args.frames_per_char} frames per character (emulating a trained model)")

    uri = f"unix://{workdir}/tts.sock"
    app = create_app(
        parse_args(
            ["--uri", uri, "--model", str(checkpoint), "--device", "cpu", "--idle-unload", "-1"]
            + (["--no-frame-streaming"] if args.no_frame_streaming else [])
        )
    )
    print("within a sentence: " + ("whole-sentence synthesis" if args.no_frame_streaming else "frame streaming"))
    await app.manager.preload("custom-voice")
    server = await start_server(uri, app)

    async def measure(send) -> tuple[float, float]:
        async with AsyncClient.from_uri(uri) as client:
            begin = time.monotonic()
            first = None
            sender = asyncio.create_task(send(client))
            while True:
                event = await client.read_event()
                if event.type == "audio-chunk" and first is None:
                    first = time.monotonic() - begin
                if event.type == ("synthesize-stopped" if args_streamed[0] else "audio-stop"):
                    break
            await sender
            return first, time.monotonic() - begin

    async def streamed(client):
        await client.write_event(SynthesizeStart().event())
        for word in TEXT.split(" "):  # an LLM writing about 30 words per second
            await client.write_event(SynthesizeChunk(text=word + " ").event())
            await asyncio.sleep(0.03)
        await client.write_event(Synthesize(text=TEXT).event())
        await client.write_event(SynthesizeStop().event())

    async def one_shot(client):
        await client.write_event(Synthesize(text=TEXT).event())

    args_streamed = [True]
    ratios = {"streamed": [], "one synthesize": []}
    for i in range(args.repeats):
        for name, send in (("streamed", streamed), ("one synthesize", one_shot)):
            args_streamed[0] = name == "streamed"
            first, total = await measure(send)
            ratios[name].append(first / total)
            print(f"run {i + 1} {name}: first audio {first:.2f} s, full audio {total:.2f} s, ratio {first / total:.2f}")
    print(f"\nthree-sentence reply, time to first audio / time to full audio (median of {args.repeats}):")
    for name, values in ratios.items():
        print(f"  {name:15s} {statistics.median(values):.2f}")
    streamed_ratio = statistics.median(ratios["streamed"])
    print(f"  streamed target <= {TARGET_STREAMED}: {'PASS' if streamed_ratio <= TARGET_STREAMED else 'FAIL'}")
    await server.stop()
    await app.manager.close()
    return 0 if streamed_ratio <= TARGET_STREAMED else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="bench", choices=sorted(tiny_models.TTS_SHAPES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--frames-per-char", type=float, default=1.0, help="Speech length to emulate (0: the server's cap)"
    )
    parser.add_argument(
        "--no-frame-streaming",
        action="store_true",
        help="Sentence-level streaming only (each sentence synthesized whole)",
    )
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    for noisy in ("asyncio", "filelock", "urllib3", "qwen_tts", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
