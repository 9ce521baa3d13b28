"""Load: 8 speech-to-text and 8 text-to-speech streams at once, at real-time pace, against one server
process each (gateway + worker). Every stream completes, in protocol order, with exactly its own result.

Each request is tagged by what it sends: ASR streams send distinct audio (`speechlike(seed=i)`), TTS
streams distinct text in alternating voices. Both servers' outputs are deterministic here, so each
request's concurrent result must equal the one the same server gave it when it ran alone:

- ASR: greedy decoding. The final transcript is decoded with the committed prefix of the last
  streaming step, and under load the steps see different amounts of audio, so the streaming step is
  set longer than the utterances (--chunk-seconds 10): the transcript is one decode of exactly the
  audio sent, whatever the timing.
- TTS: the checkpoints' generation_config.json samples (do_sample, subtalker_dosample: true, as the
  real ones), and the server sets no seed, so two identical requests give different audio. The tiny
  checkpoints are used here through copies whose generation config decodes greedily; the audio bytes
  are then reproducible (checked by the baseline itself) and compared exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import List

import pytest
from wyoming.asr import Transcribe
from wyoming.event import Event
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from wyoming_helpers import send_audio, speechlike, tts_args

pytestmark = pytest.mark.asyncio

STREAMS = 8
ASR_SECONDS = [2.0 + 0.1 * i for i in range(STREAMS)]  # 2-2.7 s utterances
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
# short sentences: random weights never stop, so each runs to its cap of 3 frames a character (+12)
TTS_TEXTS = [f"Hi {word}." + (" Bye." if i in (0, 5) else "") for i, word in enumerate(WORDS)]
TTS_VOICES = ["ryan", "vivian", "eric"]  # all preset speakers: one model
TTS_ONE_SHOT = {3, 7}  # these send one `synthesize`; the others stream their text
TOKEN_DELAY = 0.05  # an LLM writing ~20 tokens per second
QUIET_AFTER = 0.3  # seconds a connection must stay silent after its last expected event


async def read_reply(client, last: str, timeout: float = 180.0) -> List[Event]:
    """Every event up to `last` (inclusive), then QUIET_AFTER seconds in which nothing more may come."""
    events: List[Event] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await client.read_event()
            assert event is not None, f"server closed the connection after {[e.type for e in events]}"
            events.append(event)
            if event.type in (last, "error"):
                break
    try:
        extra = await asyncio.wait_for(client.read_event(), QUIET_AFTER)
    except asyncio.TimeoutError:
        extra = None
    assert extra is None, f"unexpected {extra.type} after {last}"
    return events


def event_order(events: List[Event]) -> str:
    """The event types as one letter each, for a regular expression over the whole reply."""
    letters = {
        "transcript-start": "S",
        "transcript-chunk": "c",
        "transcript": "T",
        "transcript-stop": "E",
        "audio-start": "A",
        "audio-chunk": "a",
        "audio-stop": "Z",
        "synthesize-stopped": "X",
    }
    return "".join(letters.get(e.type, "?") for e in events)


# -- speech-to-text -------------------------------------------------------------------------------


async def transcribe(server, i: int, realtime: bool):
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        reader = asyncio.create_task(read_reply(client, "transcript-stop"))
        await send_audio(client, speechlike(ASR_SECONDS[i], seed=i), realtime=realtime, chunk_seconds=0.1)
        events = await reader
    order = event_order(events)
    assert re.fullmatch(r"S?c*TE", order), f"ASR stream {i}: events out of order: {[e.type for e in events]}"
    text = events[-2].data["text"]
    chunks = "".join(e.data["text"] for e in events if e.type == "transcript-chunk")
    assert chunks == text, f"ASR stream {i}: transcript-chunks {chunks!r} do not add up to {text!r}"
    return text


# -- text-to-speech -------------------------------------------------------------------------------


def tts_pieces(text: str) -> List[str]:
    """The text as an LLM streams it: word by word, each with its following space."""
    return re.findall(r"\S+\s*", text)


async def synthesize(server, i: int, realtime: bool):
    voice = SynthesizeVoice(name=TTS_VOICES[i % len(TTS_VOICES)])
    async with server.client() as client:
        if i in TTS_ONE_SHOT:
            reader = asyncio.create_task(read_reply(client, "audio-stop"))
            await client.write_event(Synthesize(text=TTS_TEXTS[i], voice=voice).event())
        else:
            reader = asyncio.create_task(read_reply(client, "synthesize-stopped"))
            await client.write_event(SynthesizeStart(voice=voice).event())
            for piece in tts_pieces(TTS_TEXTS[i]):
                await client.write_event(SynthesizeChunk(text=piece).event())
                if realtime:
                    await asyncio.sleep(TOKEN_DELAY)
            await client.write_event(Synthesize(text=TTS_TEXTS[i], voice=voice).event())  # compat copy
            await client.write_event(SynthesizeStop().event())
        events = await reader
    order = event_order(events)
    expected = r"Aa+Z" if i in TTS_ONE_SHOT else r"Aa+ZX"
    assert re.fullmatch(expected, order), f"TTS stream {i}: events out of order: {[e.type for e in events]}"
    audio_events = [e for e in events if e.type in ("audio-start", "audio-chunk")]
    formats = {(e.data["rate"], e.data["width"], e.data["channels"]) for e in audio_events}
    assert formats == {(24000, 2, 1)}, f"TTS stream {i}: audio formats {formats}"
    return b"".join(e.payload or b"" for e in events if e.type == "audio-chunk")


def fingerprint(audio: bytes) -> str:
    return f"{len(audio) // 2} samples, sha1 {hashlib.sha1(audio).hexdigest()[:12]}"


async def test_8_asr_and_8_tts_streams_at_once_each_get_their_own_result(
    server_process, asr_model_dir, greedy_tiny_dir, voices_dir
):
    asr = await server_process(
        "wyoming_qwen_asr", "--model", str(asr_model_dir), "--chunk-seconds", "10", "--idle-unload", "-1"
    )
    tts = await server_process("wyoming_qwen_tts", *tts_args(greedy_tiny_dir, voices_dir, "--idle-unload", "-1"))

    # each request alone on its server, one after another: its expected result (the first of each
    # loads the model; the two servers do this side by side)
    async def asr_alone():
        return [await transcribe(asr, i, realtime=False) for i in range(STREAMS)]

    async def tts_alone():
        audio = [await synthesize(tts, i, realtime=False) for i in range(STREAMS)]
        assert await synthesize(tts, 0, realtime=False) == audio[0], "greedy TTS is not reproducible"
        return audio

    started = time.monotonic()
    expected_text, expected_audio = await asyncio.gather(asr_alone(), tts_alone())
    print(f"\none at a time: {time.monotonic() - started:.1f} s")
    assert len(set(expected_text)) == STREAMS, "the tags must give distinct transcripts"
    assert len(set(expected_audio)) == STREAMS, "the tags must give distinct audio"
    assert all(expected_text) and all(expected_audio)

    # all 16 at once, at real-time pace
    (asr_worker,) = asr.children()
    (tts_worker,) = tts.children()
    started = time.monotonic()
    results = await asyncio.gather(
        *(transcribe(asr, i, realtime=True) for i in range(STREAMS)),
        *(synthesize(tts, i, realtime=True) for i in range(STREAMS)),
        return_exceptions=True,
    )
    concurrent = time.monotonic() - started
    failures = [f"{'ASR' if k < STREAMS else 'TTS'} stream {k % STREAMS}: {r!r}" for k, r in enumerate(results)]
    failures = [f for f, r in zip(failures, results, strict=True) if isinstance(r, BaseException)]
    assert not failures, "\n".join(failures)
    texts, audios = results[:STREAMS], results[STREAMS:]
    for i in range(STREAMS):
        assert texts[i] == expected_text[i], f"ASR stream {i} got {texts[i]!r}, alone it got {expected_text[i]!r}"
        assert audios[i] == expected_audio[i], (
            f"TTS stream {i} got {fingerprint(audios[i])}, alone it got {fingerprint(expected_audio[i])}"
        )
    assert asr.children() == [asr_worker] and tts.children() == [tts_worker], "a worker was restarted"
    print(f"16 streams at once: {concurrent:.1f} s")
