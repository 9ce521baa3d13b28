"""The ASR server against bad, odd and hostile input, over a real unix socket.

After every case a real transcription on the same server must succeed (`assert_transcribes`), mostly on
the same connection. What each case gets back, in order, before that transcription:

| case                                    | outcome                                                             |
|-----------------------------------------|---------------------------------------------------------------------|
| audio-chunk before audio-start          | one error "protocol"; the later chunks and audio-stop are ignored   |
| audio-stop without audio-start          | one error "protocol"                                                |
| chunk in another format than announced  | one error "audio-format", session dropped; rest of utterance ignored |
| odd-length 16-bit payload               | one error "audio-format" (partial frame); rest of utterance ignored  |
| zero, negative or absurd rate/width/ch  | one error "audio-format" per audio-start, no session; chunks ignored |
| 8 kHz .. 192 kHz, 8/24/32-bit, 2..8 ch  | a transcript; the model hears the same length of 16 kHz mono audio   |
| chunk with an empty payload             | ignored; the utterance's transcript as usual                        |
| 30-minute utterance sent fast           | one error "utterance-too-long" at the limit (300 s), session and    |
|                                         | audio dropped at once, never more than 300 s buffered; rest ignored |
| silence only                            | a transcript (its text may be empty)                                |
| transcribe with an unknown language     | one error "unsupported-language"; that request's utterance ignored  |
| two audio-starts in a row               | one error "protocol"; the second utterance's transcript             |
| transcribe mid-utterance                | one error "protocol"; old utterance dropped; the new one transcribed |
| the model raises during the decode      | one error "transcription-failed"; the next request works            |
| client leaves while a step decodes      | the step stops at its next token, the model is released             |
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.info import Describe

from wyoming_helpers import read_until, send_audio, speechlike

pytestmark = pytest.mark.asyncio

RATE = 16000


@pytest.fixture
def buffered(monkeypatch):
    """The most audio (samples) any session of the test held."""
    from wyoming_qwen_asr.session import StreamingSession

    most = [0]
    add_audio = StreamingSession.add_audio

    def spy(self, pcm16):
        add_audio(self, pcm16)
        most[0] = max(most[0], self.samples)

    monkeypatch.setattr(StreamingSession, "add_audio", spy)
    return most


def chunk(audio=b"\0\0" * 1600, rate=RATE, width=2, channels=1):
    return AudioChunk(rate=rate, width=width, channels=channels, audio=audio).event()


async def request(client, pcm=None, language="en", **audio_format):
    """One whole request: transcribe, audio-start, chunks, audio-stop."""
    await client.write_event(Transcribe(language=language).event())
    await send_audio(client, speechlike(1.0) if pcm is None else pcm, **audio_format)


async def assert_transcribes(client, before=()):
    """A real transcription on `client`; `before` are the event types expected ahead of it."""
    await request(client)
    events = await read_until(client, "transcript-stop", timeout=30)
    assert types(events) == [*before, "transcript-start", "transcript", "transcript-stop"], [
        (e.type, e.data) for e in events
    ]
    assert [e for e in events if e.type == "transcript"][0].data["text"]
    # and nothing else is still on its way (a late transcript of an utterance that was refused)
    await client.write_event(Describe().event())
    assert types(await read_until(client, "info", timeout=30)) == ["info"]
    return events


def types(events):
    """Event types, transcript-chunk left out (how many come depends on timing)."""
    return [e.type for e in events if e.type != "transcript-chunk"]


def the_error(events, code):
    (error,) = [e for e in events if e.type == "error"]
    assert error.data["code"] == code, error.data
    return error.data["text"]


async def test_chunk_before_audio_start_is_one_error(start_asr):
    server = await start_asr("--chunk-seconds", "10")
    async with server.client() as client:
        for _ in range(3):
            await client.write_event(chunk())
        await client.write_event(AudioStop().event())
        events = await assert_transcribes(client, before=["error"])
        assert "before audio-start" in the_error(events, "protocol")
        # a stray chunk between transcribe and audio-start: one error, the request keeps its language
        await client.write_event(Transcribe(language="de").event())
        await client.write_event(chunk())
        await send_audio(client, speechlike(1.0))
        events = await read_until(client, "transcript-stop", timeout=30)
        assert types(events) == ["error", "transcript-start", "transcript", "transcript-stop"]
        assert [e.data["language"] for e in events if e.type == "transcript"] == ["de"]


async def test_audio_stop_without_audio_start_is_an_error(start_asr):
    server = await start_asr("--chunk-seconds", "10")
    async with server.client() as client:
        await client.write_event(AudioStop().event())
        events = await assert_transcribes(client, before=["error"])
    assert "without audio-start" in the_error(events, "protocol")


async def test_chunk_in_another_format_drops_the_utterance_quietly(start_asr):
    server = await start_asr("--chunk-seconds", "10")
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        await client.write_event(chunk())
        for _ in range(3):
            await client.write_event(chunk(rate=22050))
        await client.write_event(chunk())
        await client.write_event(AudioStop().event())
        await read_until(client, "error")
        assert server.app.manager.users("asr") == 0
        await assert_transcribes(client)


async def test_odd_length_16_bit_payload_is_a_format_error(start_asr):
    server = await start_asr("--chunk-seconds", "10")
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        await client.write_event(chunk(b"\1" * 3201))
        await client.write_event(chunk(b"\1" * 7))
        await client.write_event(AudioStop().event())
        events = await assert_transcribes(client, before=["error"])
    assert "partial sample frame" in the_error(events, "audio-format")


REFUSED_FORMATS = [
    # (rate, width, channels)
    (0, 2, 1),
    (-1, 2, 1),
    (10**9, 2, 1),
    (7999, 2, 1),
    (192001, 2, 1),
    (RATE, 0, 1),
    (RATE, 5, 1),
    (RATE, -2, 1),
    (RATE, 2, 0),
    (RATE, 2, 9),
]


async def test_refused_formats_get_one_format_error_each_and_start_nothing(start_asr):
    server = await start_asr("--chunk-seconds", "10")
    async with server.client() as client:
        for rate, width, channels in REFUSED_FORMATS:
            await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
            assert server.app.manager.users("asr") == 0
            for _ in range(2):
                await client.write_event(chunk(b"\0" * 64, rate=rate, width=width, channels=channels))
            await client.write_event(AudioStop().event())
            (error,) = await read_until(client, "error")
            assert error.data["code"] == "audio-format"
            assert "8000..192000" in error.data["text"], error.data["text"]
        await assert_transcribes(client)


def encode(mono: np.ndarray, width: int, channels: int) -> bytes:
    """Float mono audio as PCM of `width` bytes (8-bit unsigned, wider signed), channels interleaved."""
    frames = np.repeat(mono[:, None], channels, axis=1).reshape(-1)
    if width == 1:
        return (frames * 127 + 128).astype(np.uint8).tobytes()
    if width == 3:
        wide = (frames * (2**23 - 1)).astype("<i4")
        return wide.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return (frames * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()


@pytest.mark.parametrize(
    "rate, width, channels",
    [(8000, 2, 1), (192000, 2, 1), (RATE, 1, 1), (22050, 3, 2), (RATE, 4, 1), (RATE, 2, 4), (44100, 1, 8)],
    ids=["telephone", "192k", "8-bit", "24-bit-stereo", "32-bit", "4-ch", "8-bit-8-ch"],
)
async def test_accepted_formats_are_transcribed_at_16k_mono(start_asr, buffered, rate, width, channels):
    server = await start_asr("--chunk-seconds", "10")
    mono = np.frombuffer(speechlike(1.0, rate=rate), dtype=np.int16) / 32768.0
    async with server.client() as client:
        await request(client, encode(mono, width, channels), rate=rate, width=width, channels=channels)
        events = await read_until(client, "transcript-stop", "error")
        assert events[-1].type == "transcript-stop", [(e.type, e.data) for e in events]
        assert abs(buffered[0] - RATE) <= 32, buffered
        await assert_transcribes(client)


async def test_downmix_averages_the_channels():
    from wyoming_qwen_asr.handler import _downmix

    left = np.array([1000, -2000, 32767], dtype=np.int16)
    right = np.array([3000, 2000, 32767], dtype=np.int16)
    third = np.zeros(3, dtype=np.int16)
    pcm = np.stack([left, right, third], axis=1).tobytes()
    mono = _downmix(AudioChunk(rate=RATE, width=2, channels=3, audio=pcm))
    assert (mono.width, mono.channels) == (4, 1)
    got = np.frombuffer(mono.audio, dtype=np.int32) >> 16
    assert got.tolist() == [1333, 0, 21844]


async def test_empty_payloads_are_ignored(start_asr, buffered):
    server = await start_asr("--chunk-seconds", "10")
    pcm = speechlike(1.0)
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        await client.write_event(chunk(b""))
        await client.write_event(chunk(pcm))
        await client.write_event(chunk(b""))
        await client.write_event(AudioStop().event())
        events = await read_until(client, "transcript-stop", "error")
        assert types(events) == ["transcript-start", "transcript", "transcript-stop"]
        assert buffered[0] == RATE
        await assert_transcribes(client)


async def test_thirty_minute_utterance_is_cut_at_the_limit(start_asr, buffered):
    from wyoming_qwen_asr.model_io import MAX_UTTERANCE_SECONDS

    server = await start_asr()
    second = speechlike(1.0)  # sent over and over: the test keeps no 30 minutes of audio either
    users_after_error = []

    async def watch_for_the_error(client):
        events = await read_until(client, "error", timeout=60)
        users_after_error.append(server.app.manager.users("asr"))
        return events

    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        watcher = asyncio.create_task(watch_for_the_error(client))
        for _ in range(30 * 60):
            await client.write_event(chunk(second))
        await client.write_event(AudioStop().event())
        (error,) = await watcher
        assert error.data["code"] == "utterance-too-long"
        assert "300 s" in error.data["text"] and "--max-utterance-seconds" in error.data["text"]
        assert users_after_error == [0]  # session gone, model released, as soon as the limit passed
        assert buffered[0] <= MAX_UTTERANCE_SECONDS * RATE
        # nothing for the thousands of chunks after the limit: the next events are the next transcription
        await assert_transcribes(client)


async def test_max_utterance_seconds_option_and_env(monkeypatch):
    from wyoming_qwen_asr.options import parse_args

    assert parse_args([]).max_utterance_seconds == 300
    assert parse_args(["--max-utterance-seconds", "12.5"]).max_utterance_seconds == 12.5
    monkeypatch.setenv("QWEN_ASR_MAX_UTTERANCE_SECONDS", "60")
    assert parse_args([]).max_utterance_seconds == 60
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit):
            parse_args(["--max-utterance-seconds", bad])


async def test_max_utterance_seconds_reaches_the_server(start_asr):
    server = await start_asr("--chunk-seconds", "10", "--max-utterance-seconds", "2")
    async with server.client() as client:
        await request(client, speechlike(2.5))
        events = await assert_transcribes(client, before=["error"])
    assert "2 s" in the_error(events, "utterance-too-long")


async def test_silence_gives_a_transcript(start_asr):
    server = await start_asr("--chunk-seconds", "0.5")
    async with server.client() as client:
        await request(client, b"\0\0" * (2 * RATE))
        events = await read_until(client, "transcript-stop", "error")
        assert types(events) == ["transcript-start", "transcript", "transcript-stop"]
        await assert_transcribes(client)


async def test_unknown_language_ignores_that_requests_audio(start_asr):
    server = await start_asr("--chunk-seconds", "10")
    async with server.client() as client:
        await request(client, language="tlh")
        assert server.app.manager.users("asr") == 0
        events = await assert_transcribes(client, before=["error"])
    assert "tlh" in the_error(events, "unsupported-language")


async def test_two_audio_starts_in_a_row(start_asr):
    server = await start_asr("--chunk-seconds", "10")
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        await send_audio(client, speechlike(1.0))  # its own audio-start, then a whole utterance
        events = await read_until(client, "transcript-stop", timeout=30)
        assert types(events) == ["error", "transcript-start", "transcript", "transcript-stop"]
        assert "audio-start arrived during" in the_error(events, "protocol")
        assert server.app.manager.users("asr") == 0
        await assert_transcribes(client)


async def test_transcribe_mid_utterance_drops_it_and_starts_afresh(start_asr):
    server = await start_asr("--chunk-seconds", "10")
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(0.5), stop=False)
        await client.write_event(Transcribe(language="de").event())
        for _ in range(3):
            await client.write_event(chunk())  # the rest of the dropped utterance
        await send_audio(client, speechlike(1.0))
        events = await read_until(client, "transcript-stop", timeout=30)
        assert types(events) == ["error", "transcript-start", "transcript", "transcript-stop"]
        assert "transcribe arrived during an utterance" in the_error(events, "protocol")
        assert [e.data["language"] for e in events if e.type == "transcript"] == ["de"]
        await assert_transcribes(client)


async def test_model_failure_is_reported_and_the_next_request_works(start_asr):
    server = await start_asr("--chunk-seconds", "10")
    engine = server.app.manager.loaded(server.app.model_key)
    decode = engine.decode

    def fail_once(*args, **kwargs):
        engine.decode = decode
        raise RuntimeError("rigged model failure")

    engine.decode = fail_once
    async with server.client() as client:
        await request(client)
        events = await assert_transcribes(client, before=["error"])
    assert "rigged model failure" in the_error(events, "transcription-failed")
    assert server.app.manager.users("asr") == 0


async def test_client_leaving_mid_step_stops_the_step(start_asr):
    server = await start_asr("--chunk-seconds", "0.3")
    engine = server.app.manager.loaded(server.app.model_key)
    decode = engine.decode
    running, outcome = threading.Event(), []

    def endless_step(*_args, should_stop, **_kwargs):
        running.set()
        deadline = time.monotonic() + 20
        while not should_stop():
            if time.monotonic() > deadline:
                outcome.append("never stopped")
                return []
            time.sleep(0.01)
        outcome.append("stopped")
        return []

    engine.decode = endless_step
    try:
        async with server.client() as client:
            await client.write_event(Transcribe(language="en").event())
            await send_audio(client, speechlike(0.5), stop=False)
            assert await asyncio.to_thread(running.wait, 10)
        for _ in range(100):
            if outcome:
                break
            await asyncio.sleep(0.05)
        assert outcome == ["stopped"]
    finally:
        engine.decode = decode
    for _ in range(100):
        if server.app.manager.users("asr") == 0:
            break
        await asyncio.sleep(0.05)
    assert server.app.manager.users("asr") == 0
    async with server.client() as client:
        await assert_transcribes(client)


# -- the inference thread --------------------------------------------------------------------------


async def test_decode_beats_the_heartbeat_once_per_token(start_asr):
    server = await start_asr("--chunk-seconds", "10")
    engine = server.app.manager.loaded(server.app.model_key)
    decode, tokens = engine.decode, []

    def counting(*args, **kwargs):
        generated = decode(*args, **kwargs)
        tokens.append(len(generated))
        return generated

    engine.decode = counting
    inference = server.app.manager.inference
    before = inference.beats
    async with server.client() as client:
        await assert_transcribes(client)
    assert sum(tokens) >= 20
    assert inference.beats - before >= sum(tokens)


async def test_long_utterance_is_converted_and_split_on_the_inference_thread(start_asr, monkeypatch):
    from wyoming_qwen_asr import engine as engine_module
    from wyoming_qwen_asr import session as session_module

    threads = {}
    split, audio = engine_module.split_long_audio, session_module.Snapshot.audio

    def spy_split(samples):
        threads["split"] = threading.current_thread()
        return split(samples)

    def spy_audio(self):
        threads.setdefault("audio", set()).add(threading.current_thread())
        return audio(self)

    monkeypatch.setattr(engine_module, "split_long_audio", spy_split)
    monkeypatch.setattr(session_module.Snapshot, "audio", spy_audio)
    monkeypatch.setattr(session_module, "STREAM_WINDOW_SECONDS", 1.0)
    server = await start_asr("--chunk-seconds", "0.5")
    async with server.client() as client:
        await request(client, speechlike(2.0))
        events = await read_until(client, "transcript-stop", "error")
        assert events[-1].type == "transcript-stop"
    loop_thread = threading.current_thread()
    assert "split" in threads and threads["split"] is not loop_thread
    assert threads["audio"] and loop_thread not in threads["audio"]
