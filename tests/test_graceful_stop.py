"""SIGTERM to a real server process (what `docker stop` and an add-on restart send), through the gateway and
with `--no-gateway`: a short reply under way completes, a long one ends with an `error` (never a silent cut
that a client would play as the whole answer), no new connection is taken, and the process exits 0 within
the grace period, its worker with it and without an abort."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStop
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from wyoming_helpers import read_until, send_audio, speechlike, tts_args

pytestmark = pytest.mark.asyncio

GRACE = 10.0  # the default: the short reply waits for the long one's sentence on the one inference thread
# 95 sentences, under the 5,000-character cap of one request: far more than the grace can speak
LONG_TEXT = " ".join(f"This is sentence number {n} of a long reading." for n in range(95))


async def read_all(client, timeout: float = 60.0) -> list:
    """Every event until the server closes the connection."""
    events = []
    async with asyncio.timeout(timeout):
        while (event := await client.read_event()) is not None:
            events.append(event)
    return events


async def test_the_long_text_is_one_request():
    assert 4000 < len(LONG_TEXT) < 5000


async def exit_code(server, within: float) -> int:
    return await asyncio.wait_for(server.process.wait(), within)


def assert_clean_exit(server) -> None:
    log = server.log()
    assert "terminate called" not in log and "Traceback" not in log, log[-3000:]
    assert "Stopping (SIGTERM)" in log


@pytest.mark.parametrize("gateway", [True, False], ids=["gateway", "no-gateway"])
async def test_sigterm_lets_a_short_reply_finish_and_cuts_a_long_one_with_an_error(
    server_process, tiny_dir, voices_dir, gateway
):
    extra = ["--stop-grace", str(GRACE)] + ([] if gateway else ["--no-gateway"])
    server = await server_process("wyoming_qwen_tts", *tts_args(tiny_dir, voices_dir, *extra))
    async with server.client() as warm:  # the model loaded, so the requests below start at once
        await warm.write_event(Synthesize(text="Warm up.").event())
        await read_until(warm, "audio-stop", timeout=120)
    workers = server.children()
    assert len(workers) == (1 if gateway else 0)

    async with server.client() as long_client, server.client() as short_client, server.client() as idle_client:
        await long_client.write_event(SynthesizeStart().event())
        await long_client.write_event(SynthesizeChunk(text=LONG_TEXT).event())
        await long_client.write_event(SynthesizeStop().event())
        await read_until(long_client, "audio-chunk", timeout=60)  # under way
        await short_client.write_event(Synthesize(text="Hello there.").event())
        await asyncio.sleep(0.3)  # the server has read it: a request under way
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        short_events = await read_all(short_client, timeout=GRACE + 5)
        types = [event.type for event in short_events]
        assert "audio-stop" in types and "error" not in types, types
        assert time.monotonic() - signalled < GRACE

        long_events = await read_all(long_client, timeout=GRACE + 5)
        assert long_events[-1].type == "error", [event.type for event in long_events[-5:]]
        assert long_events[-1].data["code"] == "server-stopping"
        assert "--stop-grace" in long_events[-1].data["text"]
        assert "synthesize-stopped" not in [event.type for event in long_events]
        assert GRACE - 0.5 < time.monotonic() - signalled < GRACE + 3

        assert await read_all(idle_client, timeout=5) == []  # closed at once, nothing under way

    with pytest.raises(OSError):  # no new connections meanwhile
        async with server.client() as late:
            await late.write_event(Synthesize(text="Too late.").event())
            await read_until(late, "audio-stop", timeout=5)
    assert await exit_code(server, GRACE + 8) == 0
    assert time.monotonic() - signalled < GRACE + 8
    assert_clean_exit(server)
    if gateway:
        assert "exited with code 0" in server.log()


async def test_sigterm_lets_an_utterance_under_way_get_its_transcript(server_process, asr_model_dir):
    server = await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir), "--stop-grace", str(GRACE))
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(0.5), stop=False)
        for _ in range(600):  # the gateway has read them (it started a worker for them): a request is under way
            if server.children():
                break
            await asyncio.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)  # the user is still speaking
        more = speechlike(1.0, seed=1)
        for start in range(0, len(more), 3200):
            await client.write_event(
                AudioChunk(rate=16000, width=2, channels=1, audio=more[start : start + 3200]).event()
            )
        await client.write_event(AudioStop().event())
        events = await read_until(client, "transcript-stop", "error", timeout=GRACE + 5)
        assert events[-1].type == "transcript-stop", events[-1].data
    assert await exit_code(server, GRACE + 8) == 0
    assert_clean_exit(server)


async def test_sigterm_with_no_request_under_way_exits_at_once(server_process, asr_model_dir):
    server = await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir), "--stop-grace", "30")
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(0.5))
        assert (await read_until(client, "transcript-stop", timeout=120))[-1].type == "transcript-stop"
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert await exit_code(server, 15) == 0  # far inside the 30 s grace: nothing was under way
        assert time.monotonic() - started < 15
    assert_clean_exit(server)
