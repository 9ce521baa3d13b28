"""Server-side endpointing and silence that costs nothing (wyoming_qwen_asr/endpointing.py), on real speech from
espeak-ng, over real sockets: the transcript comes without `audio-stop` once the speaker has stopped, pauses
shorter than the silence are not cut, silence and noise reach no decode, `vad_sensitivity` changes the silence
used, through the gateway and with `--no-gateway`."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.info import Describe, Info

from wyoming_helpers import espeak as spoken
from wyoming_helpers import read_until

pytestmark = pytest.mark.asyncio
RATE = 16000
VAD = ("--vad", "on")  # the other tests' servers run without it (tests/wyoming_helpers.py says why)


@pytest.fixture(scope="session")
def espeak():
    """`speak(text) -> 16 kHz PCM` through espeak-ng, installed from Debian's packages when missing."""
    if shutil.which("espeak-ng") is None and shutil.which("apt-get") is not None:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "espeak-ng"],
            capture_output=True,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed and could not be installed (apt-get install espeak-ng, as root)")
    return spoken


def silence(seconds: float) -> bytes:
    return bytes(2 * int(seconds * RATE))


def noise(seconds: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * RATE)) * 1500).astype(np.int16).tobytes()


async def stream(client, pcm: bytes, chunk: float = 0.1, pace: float = 1.0) -> None:
    """Audio chunks at `pace` times real time (no audio-start, no audio-stop)."""
    step = 2 * int(chunk * RATE)
    for start in range(0, len(pcm), step):
        await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=pcm[start : start + step]).event())
        if pace:
            await asyncio.sleep(chunk / pace)


async def begin(client, sensitivity=None) -> None:
    await client.write_event(Transcribe(vad_sensitivity=sensitivity).event())
    await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())


class DecodeSpy:
    """Each decode the engine runs: the seconds of audio it was given."""

    def __init__(self, engine, monkeypatch) -> None:
        self.seconds = []
        original = engine.decode

        def decode(audio, *args, **kwargs):
            self.seconds.append(len(audio) / RATE)
            return original(audio, *args, **kwargs)

        monkeypatch.setattr(engine, "decode", decode)


async def spy(server, monkeypatch) -> DecodeSpy:
    return DecodeSpy(server.app.manager.loaded(server.app.model_key), monkeypatch)


async def test_the_transcript_comes_once_the_speaker_stops_without_audio_stop(start_asr, espeak, monkeypatch):
    server = await start_asr(*VAD, "--vad-endpointing", "0.6")
    speech = espeak("Turn on the kitchen lights")
    async with server.client() as client:
        await begin(client)
        await stream(client, silence(0.5) + speech)
        spoken = time.monotonic()
        sender = asyncio.create_task(stream(client, silence(3.0)))  # the client would send audio-stop after it
        events = await read_until(client, "transcript-stop", "error", timeout=60)
        waited = time.monotonic() - spoken
        assert events[-1].type == "transcript-stop", events[-1]
        assert not sender.done()  # it came while the client still streamed the silence
        assert waited < 0.6 + 1.0, waited
        await sender
        await client.write_event(AudioStop().event())  # a late audio-stop is answered cleanly: nothing
        await client.write_event(Describe().event())
        answer = await read_until(client, "info", "error", timeout=10)
        assert [e.type for e in answer] == ["info"]


async def test_a_pause_shorter_than_the_silence_is_not_cut(start_asr, espeak, monkeypatch):
    server = await start_asr(*VAD, "--vad-endpointing", "1.0")
    decodes = await spy(server, monkeypatch)
    first, second = espeak("Turn on"), espeak("the kitchen lights")
    async with server.client() as client:
        await begin(client)
        await stream(client, first + silence(0.4) + second, pace=4.0)
        await stream(client, silence(1.5), pace=4.0)
        events = await read_until(client, "transcript-stop", "error", timeout=60)
    assert events[-1].type == "transcript-stop"
    spoken = (len(first) + len(second)) / 2 / RATE
    assert max(decodes.seconds) >= spoken  # the final decode heard both parts


@pytest.mark.parametrize("endpointing", [False, True])
@pytest.mark.parametrize("sound", ["silence", "noise"])
async def test_no_speech_gets_an_empty_transcript_and_no_decode(start_asr, monkeypatch, sound, endpointing):
    server = await start_asr(*VAD, *(["--vad-endpointing", "0.6"] if endpointing else []))
    decodes = await spy(server, monkeypatch)
    audio = silence(3.0) if sound == "silence" else noise(3.0)
    async with server.client() as client:
        await begin(client)
        await stream(client, audio, pace=0)
        await client.write_event(AudioStop().event())
        events = await read_until(client, "transcript-stop", "error", timeout=60)
    transcript = next(Transcript.from_event(e) for e in events if e.type == "transcript")
    assert transcript.text == ""
    assert decodes.seconds == []  # the model was never called


async def test_leading_and_trailing_silence_are_not_decoded(start_asr, espeak, monkeypatch):
    from wyoming_qwen_asr.endpointing import LEAD_MARGIN, TAIL_MARGIN

    server = await start_asr(*VAD)
    decodes = await spy(server, monkeypatch)
    speech = espeak("Turn on the kitchen lights")
    async with server.client() as client:
        await begin(client)
        await stream(client, silence(1.0) + speech + silence(1.0), pace=0)
        await client.write_event(AudioStop().event())
        events = await read_until(client, "transcript-stop", "error", timeout=60)
    assert events[-1].type == "transcript-stop"
    spoken = len(speech) / 2 / RATE
    assert max(decodes.seconds) <= spoken + LEAD_MARGIN + TAIL_MARGIN + 0.1  # not the 2 s of silence around it


@pytest.mark.parametrize("sensitivity, cut", [("aggressive", True), ("relaxed", False)])
async def test_vad_sensitivity_changes_the_silence_used(start_asr, espeak, sensitivity, cut):
    server = await start_asr(*VAD, "--vad-endpointing", "0.8")  # aggressive: 0.4 s; relaxed: 1.2 s
    first = espeak("Turn on")
    async with server.client() as client:
        await begin(client, sensitivity)
        await stream(client, first + silence(0.7), pace=4.0)
        ended_in_the_pause = False
        try:
            events = await read_until(client, "transcript-stop", timeout=1.5)
            ended_in_the_pause = events[-1].type == "transcript-stop"
        except TimeoutError:
            pass
        assert ended_in_the_pause == cut


async def test_describe_says_no_external_vad_is_needed_with_endpointing(start_asr):
    for extra, required in (([], True), ([*VAD, "--vad-endpointing"], False)):
        server = await start_asr(*extra)
        async with server.client() as client:
            await client.write_event(Describe().event())
            info = Info.from_event((await read_until(client, "info"))[-1])
        assert info.asr[0].requires_external_vad is required


@pytest.mark.parametrize("gateway", [True, False], ids=["gateway", "no-gateway"])
async def test_endpointing_in_a_server_process(server_process, asr_model_dir, espeak, gateway):
    """A client that keeps streaming after its transcript, then sends audio-stop and a second utterance."""
    server = await server_process(
        "wyoming_qwen_asr",
        "--model",
        str(asr_model_dir),
        *VAD,
        "--vad-endpointing",
        "0.6",
        *([] if gateway else ["--no-gateway"]),
    )
    speech = espeak("What time is it")
    async with server.client() as client:
        for _ in range(2):
            await begin(client)
            await stream(client, speech + silence(0.1), pace=0)
            streaming = asyncio.create_task(stream(client, silence(2.0), pace=2.0))
            events = await read_until(client, "transcript-stop", "error", timeout=180)
            assert events[-1].type == "transcript-stop", events[-1]
            await streaming  # audio after the transcript is ignored
            await client.write_event(AudioStop().event())
    assert "Client error" not in server.log()  # nothing the client did was refused


async def test_the_detector_is_on_by_default(monkeypatch):
    from wyoming_qwen_asr.options import parse_args

    monkeypatch.delenv("QWEN_ASR_VAD", raising=False)
    args = parse_args([])
    assert args.vad == "on" and args.vad_endpointing is None
    assert parse_args(["--vad-endpointing"]).vad_endpointing == 0.8
    monkeypatch.setenv("QWEN_ASR_VAD_ENDPOINTING", "1.2")
    assert parse_args([]).vad_endpointing == 1.2
    with pytest.raises(SystemExit):
        parse_args(["--vad", "off", "--vad-endpointing"])


async def test_the_decode_during_the_pause_is_the_final_one(start_asr, espeak, monkeypatch):
    """With endpointing the speech and its tail margin are decoded while the silence is still being confirmed;
    when the silence proves the end, that output is the transcript: no decode runs after the end."""
    from wyoming_qwen_asr.session import StreamingSession

    server = await start_asr(*VAD, "--vad-endpointing", "0.8")
    decodes = await spy(server, monkeypatch)
    asked = []
    step_now = StreamingSession.step_now
    monkeypatch.setattr(StreamingSession, "step_now", lambda session: asked.append(1) or step_now(session))
    async with server.client() as client:
        await begin(client)
        await stream(client, espeak("Turn on the kitchen lights") + silence(2.0), pace=1.0)
        events = await read_until(client, "transcript-stop", "error", timeout=60)
    assert events[-1].type == "transcript-stop"
    assert asked == [1]  # one decode asked for when the pause began (the speech is shorter than a step)
    assert len(decodes.seconds) == 1, decodes.seconds  # and its output was final: nothing decoded at the end
