"""Server-side endpointing against Home Assistant's own end of speech, side by side in one run, and the model
compute that silence no longer costs.

A spoken command from espeak-ng (1 s of silence, the command, then silence) is streamed at real-time pace
to two ASR servers in this process, in turn:
- endpointing on (`--vad-endpointing SILENCE`): the client streams silence until the transcript comes;
- the client sends `audio-stop` after Home Assistant's default trailing silence (0.7 s, its
  `VadSensitivity.DEFAULT`), the server without endpointing.
Printed: the time from the end of speech to `transcript`, medians (target: endpointing within 0.5 s + SILENCE).
Then the typical command (1 s lead-in, about 2 s of speech, 1 s tail), sent at once to a server with the
detector (`--vad on`) and one without (`--vad off`): seconds of audio decoded and decode time, summed over
the decodes of the utterance, and their ratio.

    script/bench endpointing [--shapes tiny,real-0.6b] [--silence 0.8] [--repeats 3] [--models DIR]

--models: a folder with an `asr` checkpoint of the real 0.6B shape, used for that shape (default: built now).
Needs espeak-ng (apt-get install espeak-ng).
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
from wyoming_helpers import espeak as spoken  # noqa: E402
from wyoming_helpers import read_until, scratch_dir, start_server  # noqa: E402

RATE = 16000
HA_SILENCE = 0.7
COMMAND = "Turn on the kitchen lights and set them to fifty percent"
CHUNK = 0.1


def silence(seconds: float) -> bytes:
    return bytes(2 * int(seconds * RATE))


async def start(model: Path, folder: Path, *options: str):
    from wyoming_qwen_asr.app import create_app
    from wyoming_qwen_asr.options import parse_args

    uri = f"unix://{folder}/asr-{time.monotonic_ns()}.sock"
    args = parse_args(["--uri", uri, "--model", str(model), "--device", "cpu", *options])
    app = create_app(args)
    await app.manager.preload(app.preload_key)
    server = await start_server(uri, app)
    return app, server, uri


async def end_to_transcript(uri: str, speech: bytes, send_stop_after: float = None) -> float:
    """Seconds from the end of speech to the transcript; the audio at real-time pace."""
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncClient

    step = 2 * int(CHUNK * RATE)
    lead = silence(1.0)
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        for start_at in range(0, len(lead + speech), step):
            chunk = (lead + speech)[start_at : start_at + step]
            await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=chunk).event())
            await asyncio.sleep(CHUNK)
        speech_end = time.monotonic()
        reading = asyncio.create_task(read_until(client, "transcript", timeout=300))
        tail = silence(send_stop_after if send_stop_after is not None else 10.0)
        for start_at in range(0, len(tail), step):
            if reading.done():
                break
            await client.write_event(
                AudioChunk(rate=RATE, width=2, channels=1, audio=tail[start_at : start_at + step]).event()
            )
            await asyncio.sleep(CHUNK)
        if send_stop_after is not None:
            await client.write_event(AudioStop().event())
        await reading
        return time.monotonic() - speech_end


async def decode_cost(app, uri: str, audio: bytes) -> tuple:
    """Seconds of audio decoded and decode seconds, summed over the utterance's decodes (sent at once)."""
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncClient

    engine = app.manager.loaded(app.model_key)
    original = engine.decode
    decoded, spent = [], []

    def timed(pcm, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(pcm, *args, **kwargs)
        finally:
            decoded.append(len(pcm) / RATE)
            spent.append(time.perf_counter() - started)

    engine.decode = timed
    try:
        async with AsyncClient.from_uri(uri) as client:
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
            for start_at in range(0, len(audio), 3200):
                await client.write_event(
                    AudioChunk(rate=RATE, width=2, channels=1, audio=audio[start_at : start_at + 3200]).event()
                )
            await client.write_event(AudioStop().event())
            await read_until(client, "transcript-stop", timeout=600)
    finally:
        engine.decode = original
    return sum(decoded), sum(spent)


async def run_shape(shape: str, model: Path, folder: Path, silence_s: float, repeats: int) -> None:
    speech = spoken(COMMAND)
    endpointed = await start(model, folder, "--vad", "on", "--vad-endpointing", str(silence_s))
    plain = await start(model, folder, "--vad", "on")
    off = await start(model, folder, "--vad", "off")
    try:
        await end_to_transcript(endpointed[2], speech)  # warm up
        await end_to_transcript(plain[2], speech, HA_SILENCE)
        ours, ha = [], []
        for index in range(repeats):
            ways = [("ours", endpointed[2], None), ("ha", plain[2], HA_SILENCE)]
            for name, uri, stop_after in ways if index % 2 == 0 else ways[::-1]:
                (ours if name == "ours" else ha).append(await end_to_transcript(uri, speech, stop_after))
        typical = silence(1.0) + spoken("Turn on the kitchen lights please") + silence(1.0)
        gated = [await decode_cost(plain[0], plain[2], typical) for _ in range(repeats)]
        ungated = [await decode_cost(off[0], off[2], typical) for _ in range(repeats)]
    finally:
        for app, server, _uri in (endpointed, plain, off):
            await server.stop()
            await app.manager.close()
    speech_s = len(speech) / 2 / RATE
    print(f"\n{shape}: a {speech_s:.1f} s command at real-time pace, {repeats} times each way in turn (medians)")
    print("what | end of speech to transcript, s")
    print(f"endpointing on (--vad-endpointing {silence_s:g}) | {statistics.median(ours):.2f}")
    print(f"audio-stop after Home Assistant's {HA_SILENCE:g} s of silence | {statistics.median(ha):.2f}")
    target = 0.5 + silence_s
    verdict = "met" if statistics.median(ours) <= target else "NOT met"
    print(f"  endpointing: {statistics.median(ours):.2f} s (target <= 0.5 + {silence_s:g} = {target:.2f} s) {verdict}")
    typical_s = len(typical) / 2 / RATE
    seconds = (statistics.median(g[0] for g in gated), statistics.median(u[0] for u in ungated))
    spent = (statistics.median(g[1] for g in gated), statistics.median(u[1] for u in ungated))
    print(f"typical command ({typical_s:.1f} s: 1 s lead-in, speech, 1 s tail), sent at once")
    print("what | --vad on | --vad off | on / off")
    print(f"audio decoded, s | {seconds[0]:.2f} | {seconds[1]:.2f} | {seconds[0] / seconds[1]:.2f}")
    print(f"decode time, s | {spent[0]:.3f} | {spent[1]:.3f} | {spent[0] / spent[1]:.2f}")


async def run(args) -> int:
    folder = scratch_dir("bench-endpointing-")
    for shape in args.shapes.split(","):
        if shape == "real-0.6b" and args.models is not None:
            model = args.models / "asr"
        else:
            model = tiny_models.build_asr(folder / f"asr-{shape}", shape=shape)
        await run_shape(shape, model, folder, args.silence, args.repeats)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny,real-0.6b")
    parser.add_argument("--silence", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", type=Path)
    args = parser.parse_args(argv)
    from shared import cpu_threads

    cpu_threads.apply(2, "passive")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
