"""The HTTP front on the gateway, as real processes: one gateway with two fronts over one worker. /health answers
without starting a worker (and fast while a model loads), the gateway stays light with HTTP on, Wyoming and HTTP
clients at once get their own answers, either front keeps the worker alive for the other, and the idle stop
still hands the worker's memory back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from openai import AsyncOpenAI
from test_gateway_process import transcribe, wait_for
from wyoming.asr import Transcribe, Transcript

from wyoming_helpers import free_port, read_until, rss_kib, send_audio, speechlike, tts_args, wav_bytes

pytestmark = pytest.mark.asyncio

GATEWAY_RSS_MIB = 40  # the target for an idle gateway with HTTP on


async def start_with_http(server_process, module, *args, env=None):
    port = free_port()
    server = await server_process(module, *args, "--http", f"tcp://127.0.0.1:{port}", env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):  # the HTTP site starts with the gateway
        try:
            async with aiohttp.ClientSession() as session, session.get(f"{base}/health"):
                break
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    return server, base


def openai(base: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=180)


async def health(base: str) -> tuple:
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.get(f"{base}/health") as response:
        return await response.json(), time.monotonic() - started


async def test_health_needs_no_worker_and_the_gateway_stays_light(server_process, asr_model_dir):
    rig = Path(__file__).resolve().parent / "rigs" / "slow_load"
    server, base = await start_with_http(
        server_process, "wyoming_qwen_asr", "--model", str(asr_model_dir),
        env={"PYTHONPATH": str(rig), "WYOMING_QWEN_RIG_LOAD_DELAY": "4"},
    )  # fmt: skip
    body, _ = await health(base)
    assert body == {"status": "ok", "worker": "stopped"}
    assert server.children() == []
    rss = rss_kib(server.pid) / 1024
    print(f"gateway RSS with --http, idle: {rss:.1f} MiB")
    assert rss <= GATEWAY_RSS_MIB
    # while the worker starts and its model loads (4 s longer through the rig), /health stays fast
    request = asyncio.create_task(
        openai(base).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes(speechlike(1.0))))
    )
    await wait_for(lambda: server.children(), what="a worker")
    times = []
    while not request.done():
        times.append((await health(base))[1])
        await asyncio.sleep(0.2)
    assert (await request).text
    assert len(times) >= 10 and max(times) < 0.05, times


async def test_wyoming_and_http_clients_at_once_get_their_own_transcripts(server_process, asr_model_dir):
    server, base = await start_with_http(server_process, "wyoming_qwen_asr", "--model", str(asr_model_dir))
    audios = [speechlike(1.0 + 0.25 * i, seed=10 + i) for i in range(8)]
    expected = []
    for pcm in audios:  # each alone first
        async with server.client() as client:
            await client.write_event(Transcribe().event())
            await send_audio(client, pcm)
            events = await read_until(client, "transcript-stop", timeout=180)
        expected.append(next(Transcript.from_event(e).text for e in events if e.type == "transcript"))
    assert len(set(expected)) > 1

    async def over_wyoming(pcm):
        async with server.client() as client:
            await client.write_event(Transcribe().event())
            await send_audio(client, pcm, realtime=True, chunk_seconds=0.25)
            events = await read_until(client, "transcript-stop", timeout=180)
        return next(Transcript.from_event(e).text for e in events if e.type == "transcript")

    async def over_http(pcm):
        return (await openai(base).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_bytes(pcm)))).text

    results = await asyncio.gather(*(over_wyoming(p) for p in audios[:4]), *(over_http(p) for p in audios[4:]))
    assert list(results) == expected


async def test_either_front_keeps_the_worker_for_the_other_and_the_idle_stop_still_runs(server_process, asr_model_dir):
    server, base = await start_with_http(
        server_process, "wyoming_qwen_asr", "--model", str(asr_model_dir), "--idle-unload", "2", "--idle-exit", "0"
    )
    assert (await transcribe(server))[-1].type == "transcript-stop"  # Wyoming starts the worker
    (worker,) = server.children()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base}/v1/audio/transcriptions/live") as ws:
            await ws.send_json({"rate": 16000, "width": 2, "channels": 1})
            for _ in range(8):  # 4 s of a live HTTP stream, twice the idle time
                await ws.send_bytes(speechlike(0.5))
                await asyncio.sleep(0.5)
            assert server.children() == [worker]  # kept alive by the HTTP client
            await ws.send_json({"type": "stop"})
            last = None
            async for message in ws:
                last = message.json()
            assert last["type"] == "transcript.text.done"
    await wait_for(lambda: server.children() == [], timeout=30, what="the idle worker to exit")
    body, _ = await health(base)
    assert body["worker"] == "stopped"


async def test_speech_through_the_gateway(server_process, tiny_dir, voices_dir):
    server, base = await start_with_http(server_process, "wyoming_qwen_tts", *tts_args(tiny_dir, voices_dir))
    assert server.children() == []
    response = await openai(base).audio.speech.create(
        model="tts-1", voice="echo", input="Hello.", response_format="wav"
    )
    audio = await response.aread()
    assert audio[:4] == b"RIFF" and len(audio) > 44
    assert len(server.children()) == 1


async def test_sigterm_lets_an_http_reply_under_way_finish(server_process, greedy_tiny_dir, voices_dir):
    """Greedy decoding: the reply cut by nothing is the one to compare with (sampled, random weights end a
    reply early now and then, at a sampled end token)."""
    import signal

    server, base = await start_with_http(
        server_process, "wyoming_qwen_tts", *tts_args(greedy_tiny_dir, voices_dir), "--stop-grace", "30"
    )
    text = "This one sentence is spoken while the server is asked to stop."
    body = {"model": "tts-1", "voice": "echo", "input": text, "response_format": "pcm"}
    async with aiohttp.ClientSession() as session, session.post(f"{base}/v1/audio/speech", json=body) as response:
        whole = await response.content.read()
    async with aiohttp.ClientSession() as session, session.post(f"{base}/v1/audio/speech", json=body) as response:
        audio = await response.content.read(4096)  # under way
        server.process.send_signal(signal.SIGTERM)
        audio += await response.content.read()
    assert len(whole) > 4096 and audio == whole  # the whole reply
    assert await asyncio.wait_for(server.process.wait(), 30) == 0
