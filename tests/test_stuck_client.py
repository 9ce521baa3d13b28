"""A client that stops reading (a kitchen speaker that hangs) must not silence the living room: real server
processes over TCP, a raw socket with a 4 KiB receive buffer that sends a long reading and never reads.

Before the fix the kernel took megabytes of its audio (minutes of speech), so its reply went on
synthesizing sentence after sentence on the one inference thread and every other room waited behind
them: the other room's first audio came 5-15 times later than alone (1.82 s against 0.12 s here). Now
each connection's send buffer is small, a reply that cannot be written pauses between sentences, and
the thread is free for the others."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
from wyoming.asr import Transcribe
from wyoming.client import AsyncClient

from wyoming_helpers import (
    READING,
    audio_events,
    first_audio,
    free_port,
    never_reading_client,
    read_until,
    send_audio,
    speechlike,
    tts_args,
)

pytestmark = pytest.mark.asyncio


async def test_a_client_that_never_reads_delays_no_other_room(server_process, tiny_dir, voices_dir):
    port = free_port()
    uri = f"tcp://127.0.0.1:{port}"
    await server_process("wyoming_qwen_tts", *tts_args(tiny_dir, voices_dir), uri=uri)
    await first_audio(uri, "Warm up.")
    alone = statistics.median([await first_audio(uri) for _ in range(3)])

    stuck = never_reading_client(port, "synthesize", {"text": READING})
    try:
        await asyncio.sleep(8.0)  # as in the report: the other room asks 8 s later
        beside = min([await first_audio(uri) for _ in range(2)])
    finally:
        stuck.close()
    print(f"first audio alone {alone:.3f} s, beside a client that never reads {beside:.3f} s")
    assert beside <= 2 * alone, (alone, beside)


async def test_the_worker_of_a_client_that_never_reads_is_idle_stopped(server_process, tiny_dir, voices_dir):
    """--write-timeout 5 --idle-unload 2: the client is dropped once a write has waited 5 s, and the worker
    stops 2 s after, well within write-timeout + idle-unload + 5 s (it used to run on for minutes)."""
    port = free_port()
    uri = f"tcp://127.0.0.1:{port}"
    server = await server_process(
        "wyoming_qwen_tts",
        *tts_args(tiny_dir, voices_dir, "--write-timeout", "5", "--idle-unload", "2", "--idle-exit", "0"),
        uri=uri,
    )
    await first_audio(uri, "Warm up.")
    stuck = never_reading_client(port, "synthesize", {"text": READING})
    sent = time.monotonic()
    try:
        await asyncio.sleep(0.5)
        (worker,) = server.children()
        deadline = sent + 5 + 2 + 5 + 5  # + the seconds its buffers take to fill
        while server.children() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        gone = time.monotonic() - sent
    finally:
        stuck.close()
    log = server.log()
    assert server.children() == [], f"the worker was still running {gone:.1f} s after the request"
    assert "Dropping a client" in log and "no connection for" in log
    print(f"worker gone {gone:.1f} s after the request of a client that never reads")


async def test_an_asr_client_that_never_reads_delays_no_other_transcript(server_process, asr_model_dir):
    port = free_port()
    uri = f"tcp://127.0.0.1:{port}"
    await server_process("wyoming_qwen_asr", "--model", str(asr_model_dir), uri=uri)

    async def once() -> float:
        async with AsyncClient.from_uri(uri) as client:
            await client.write_event(Transcribe(language="en").event())
            await send_audio(client, speechlike(1.0))
            started = time.monotonic()
            await read_until(client, "transcript-stop", timeout=120)
            return time.monotonic() - started

    await once()
    alone = statistics.median([await once() for _ in range(3)])
    stucks = []
    try:
        for seed in range(3):  # three rooms that stream an utterance and never read the transcript
            pcm = speechlike(1.0, seed=seed)
            stucks.append(never_reading_client(port, "transcribe", {"language": "en"}, [audio_events(pcm)]))
        await asyncio.sleep(2.0)
        beside = min([await once() for _ in range(2)])
    finally:
        for sock in stucks:
            sock.close()
    print(f"transcript alone {alone:.3f} s, beside clients that never read {beside:.3f} s")
    assert beside <= 2 * alone + 0.1, (alone, beside)
