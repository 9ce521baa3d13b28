"""The HTTP front against the Wyoming port, side by side in one run, through one gateway and its worker (real
processes, TCP): the same sentence's first audio and whole reply, and the same utterance's final transcript,
each way in turn, medians and the paired differences (target: HTTP adds at most 10 ms).

- speech: `POST /v1/audio/speech` (`response_format=pcm`, read as it streams) against `synthesize` on the
  Wyoming port, from the request to the first audio byte and to the last;
- transcription: a WAV upload to `POST /v1/audio/transcriptions` against the same audio sent at once as
  `audio-chunk`s, from the first byte sent to the transcript. The upload also pays the worker's decode of the
  file (its own round trip), which a Wyoming client never needs.

    script/bench http [--shape tiny|real-0.6b] [--repeats 10] [--models DIR]

--models: a folder with `asr` and `tts-custom-voice` checkpoints (default: built now at --shape).
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
from wyoming_helpers import free_port, scratch_dir, spawn_server, speechlike, stop_server, wav_bytes  # noqa: E402

TARGET_MS = 10.0
TEXT = "The kitchen lights are on now."


async def wyoming_speech(uri: str) -> tuple:
    from wyoming.client import AsyncClient
    from wyoming.tts import Synthesize, SynthesizeVoice

    async with AsyncClient.from_uri(uri) as client:
        started = time.monotonic()
        await client.write_event(Synthesize(text=TEXT, voice=SynthesizeVoice(name="ryan")).event())
        first = None
        while True:
            event = await client.read_event()
            if event.type == "audio-chunk" and first is None:
                first = time.monotonic() - started
            if event.type == "audio-stop":
                return first, time.monotonic() - started


async def http_speech(session, base: str) -> tuple:
    body = {"model": "tts-1", "voice": "ryan", "input": TEXT, "response_format": "pcm"}
    started = time.monotonic()
    first = None
    async with session.post(f"{base}/v1/audio/speech", json=body) as response:
        async for _piece in response.content.iter_any():
            if first is None:
                first = time.monotonic() - started
    return first, time.monotonic() - started


async def wyoming_transcript(uri: str, pcm: bytes) -> float:
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncClient

    async with AsyncClient.from_uri(uri) as client:
        started = time.monotonic()
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for start in range(0, len(pcm), 32000):
            await client.write_event(
                AudioChunk(rate=16000, width=2, channels=1, audio=pcm[start : start + 32000]).event()
            )
        await client.write_event(AudioStop().event())
        while (await client.read_event()).type != "transcript":
            pass
        return time.monotonic() - started


async def http_transcript(session, base: str, wav: bytes) -> float:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("model", "whisper-1")
    form.add_field("language", "en")
    form.add_field("file", wav, filename="a.wav", content_type="audio/wav")
    started = time.monotonic()
    async with session.post(f"{base}/v1/audio/transcriptions", data=form) as response:
        await response.read()
        assert response.status == 200, await response.text()
    return time.monotonic() - started


def _report(name: str, wyoming: list, http: list) -> float:
    added = statistics.median([h - w for w, h in zip(wyoming, http, strict=True)]) * 1000
    print(f"{name} | {statistics.median(wyoming) * 1000:.1f} | {statistics.median(http) * 1000:.1f} | {added:+.1f}")
    return added


async def run(models: Path, repeats: int, workdir: Path) -> int:
    import aiohttp

    results = {}
    for kind, module, args in (
        ("tts", "wyoming_qwen_tts", ["--model", str(models / "tts-custom-voice")]),
        ("asr", "wyoming_qwen_asr", ["--model", str(models / "asr")]),
    ):
        port, http_port = free_port(), free_port()
        uri, base = f"tcp://127.0.0.1:{port}", f"http://127.0.0.1:{http_port}"
        process = await spawn_server(
            module, uri, workdir / f"{kind}.log", *args, "--http", f"tcp://127.0.0.1:{http_port}", "--preload"
        )
        try:
            async with aiohttp.ClientSession() as session:
                if kind == "tts":
                    await wyoming_speech(uri), await http_speech(session, base)  # warm up both paths
                    pairs = []
                    for index in range(repeats):
                        ways = [wyoming_speech(uri), http_speech(session, base)]
                        done = [await w for w in (ways if index % 2 == 0 else ways[::-1])]
                        pairs.append(done if index % 2 == 0 else done[::-1])
                    results["tts first"] = ([p[0][0] for p in pairs], [p[1][0] for p in pairs])
                    results["tts whole"] = ([p[0][1] for p in pairs], [p[1][1] for p in pairs])
                else:
                    pcm = speechlike(3.0)
                    wav = wav_bytes(pcm)
                    await wyoming_transcript(uri, pcm), await http_transcript(session, base, wav)
                    pairs = []
                    for index in range(repeats):
                        ways = [wyoming_transcript(uri, pcm), http_transcript(session, base, wav)]
                        done = [await w for w in (ways if index % 2 == 0 else ways[::-1])]
                        pairs.append(done if index % 2 == 0 else done[::-1])
                    results["asr final"] = ([p[0] for p in pairs], [p[1] for p in pairs])
        finally:
            await stop_server(process)
    print(f"\nthe same request each way in turn, {repeats} times (ms, medians; added: median of paired differences)")
    print("what | Wyoming | HTTP | HTTP adds")
    added = {
        "first audio (TTS)": _report("first audio (TTS)", *results["tts first"]),
        "whole reply (TTS)": _report("whole reply (TTS)", *results["tts whole"]),
        "final transcript, 3 s utterance (ASR)": _report("final transcript, 3 s (ASR)", *results["asr final"]),
    }
    for name in ("first audio (TTS)", "final transcript, 3 s utterance (ASR)"):
        verdict = "met" if added[name] <= TARGET_MS else "NOT met"
        print(f"  {name}: HTTP adds {added[name]:+.1f} ms (target <= {TARGET_MS:g} ms) {verdict}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--models", type=Path)
    args = parser.parse_args(argv)
    workdir = scratch_dir("bench-http-")
    models = args.models
    if models is None:
        models = workdir / "models"
        tiny_models.build_asr(models / "asr", shape=args.shape)
        tiny_models.build_tts(models / "tts-custom-voice", shape=args.shape)
    return asyncio.run(run(models, args.repeats, workdir))


if __name__ == "__main__":
    sys.exit(main())
