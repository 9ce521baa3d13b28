"""Frame-level streaming, side by side in one run, for one long sentence (about 15 s of speech):
- time to first audio / total time, with frame streaming and with whole-sentence synthesis
  (both over a unix socket to the server in this process);
- total time with frame streaming / the stock `generate_custom_voice` for the same text and seed.

Random weights never stop on their own, so the speech length is set to a realistic rate for all runs
alike (--frames-per-char 1.0, 12.5 frames per second at ~13 characters per second).

    script/bench tts-frames [--shape bench|real-0.6b|tiny] [--repeats 2]
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

import tiny_models  # noqa: E402
from wyoming_helpers import read_until, scratch_dir, start_server  # noqa: E402

SENTENCE = (
    "Tomorrow morning the weather will be cloudy with a little rain in the north, temperatures "
    "around twelve degrees and a light wind from the west, so take a jacket and an umbrella "
    "when you go out in the afternoon."
)
TARGET_FIRST = 0.10
TARGET_OVERHEAD = 1.10
SEED = 1234


async def run(args) -> int:
    import torch
    from wyoming.client import AsyncClient
    from wyoming.tts import Synthesize, SynthesizeVoice

    from wyoming_qwen_tts import engine as engine_module
    from wyoming_qwen_tts.app import create_app
    from wyoming_qwen_tts.options import parse_args

    engine_module.FRAMES_PER_CHAR = engine_module.FRAMES_PER_WIDE_CHAR = args.frames_per_char
    engine_module.FRAME_MARGIN = 0
    frames = engine_module.max_frames_for(SENTENCE)
    workdir = scratch_dir("bench-tts-frames-")
    started = time.monotonic()
    checkpoint = tiny_models.build_tts(workdir / "custom-voice", shape=args.shape)
    print(
        f"checkpoint: random Qwen3-TTS CustomVoice, shape '{args.shape}' (built in {time.monotonic() - started:.0f} s)"
    )
    print(f"sentence: {len(SENTENCE)} characters -> {frames} frames = {frames / 12.5:.1f} s of speech")

    servers = {}
    for name, extra in (("frame streaming", []), ("whole sentence", ["--no-frame-streaming"])):
        uri = f"unix://{workdir}/{len(servers)}.sock"
        app = create_app(
            parse_args(["--uri", uri, "--model", str(checkpoint), "--device", "cpu", "--idle-unload", "-1", *extra])
        )
        servers[name] = (app, await start_server(uri, app), uri)
    shared_app = servers["frame streaming"][0]
    await shared_app.manager.preload("custom-voice")
    engine = shared_app.manager.loaded("custom-voice")
    for app, _, _ in servers.values():  # one loaded model for both servers: same weights, same seed
        app.manager = shared_app.manager

    async def over_socket(uri) -> tuple[float, float]:
        await shared_app.manager.run("custom-voice", lambda _engine: torch.manual_seed(SEED))
        async with AsyncClient.from_uri(uri) as client:
            begin = time.monotonic()
            await client.write_event(Synthesize(text=SENTENCE, voice=SynthesizeVoice(name="ryan")).event())
            first = time.monotonic() - begin if (await read_until(client, "audio-chunk", timeout=3600)) else None
            await read_until(client, "audio-stop", timeout=3600)
            return first, time.monotonic() - begin

    async def stock() -> float:
        def call(_engine):
            torch.manual_seed(SEED)
            begin = time.monotonic()
            engine.tts.generate_custom_voice(text=SENTENCE, speaker="ryan", language="auto", max_new_tokens=frames + 1)
            return time.monotonic() - begin

        return await shared_app.manager.run("custom-voice", call)

    results = {"frame streaming": [], "whole sentence": [], "overhead": []}
    for i in range(args.repeats):
        first, total = await over_socket(servers["frame streaming"][2])
        results["frame streaming"].append(first / total)
        w_first, w_total = await over_socket(servers["whole sentence"][2])
        results["whole sentence"].append(w_first / w_total)
        stock_s = await stock()
        results["overhead"].append(total / stock_s)
        print(
            f"run {i + 1}: frame streaming first {first:.2f} s / total {total:.2f} s; whole sentence first "
            f"{w_first:.2f} s / total {w_total:.2f} s; stock generate_custom_voice {stock_s:.2f} s"
        )
    first_ratio = statistics.median(results["frame streaming"])
    overhead = statistics.median(results["overhead"])
    print(f"\nmedians of {args.repeats}:")
    print(f"  time to first audio / total, frame streaming: {first_ratio:.3f} (target <= {TARGET_FIRST})")
    print(f"  time to first audio / total, whole sentence:  {statistics.median(results['whole sentence']):.3f}")
    print(f"  total with frame streaming / stock generate:   {overhead:.3f} (target <= {TARGET_OVERHEAD})")
    ok = first_ratio <= TARGET_FIRST and overhead <= TARGET_OVERHEAD
    print(f"  {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="bench", choices=sorted(tiny_models.TTS_SHAPES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--frames-per-char", type=float, default=1.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
