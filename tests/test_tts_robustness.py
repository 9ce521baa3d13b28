"""The TTS server when things go wrong: clients that leave, bad voice references, a full disk, odd input.

Every case runs over a real socket and is followed by a real synthesis on the same server, which must
succeed (audio-start, audio-chunk..., audio-stop). The outcome of each case:

| case                                               | outcome                                                  |
|----------------------------------------------------|----------------------------------------------------------|
| client leaves while its sentence is queued         | its job never runs                                       |
| client leaves mid-sentence, --no-frame-streaming   | generation stops within a frame or two                   |
| a synthesis, either mode                           | one inference heartbeat per generated frame              |
| reference.wav corrupt / 0.1 s / 10 min             | error "voice-reference" (voice, file, accepted range)    |
| the disk fills while the clone prompt is cached    | audio; no cache file left behind; prompt kept in memory  |
| synthesize, empty text                             | audio-start, audio-stop, no audio                        |
| synthesize, 100,000 characters                     | error "text-too-long"                                    |
| synthesize, control characters only (NUL, BEL)     | audio-start, audio-stop, no audio (they are removed)     |
| synthesize, ANSI colours and NUL/BEL in text       | audio of the text without them                           |
| synthesize, emoji only                             | audio                                                    |
| synthesize, Latin + CJK + Cyrillic                 | audio                                                    |
| synthesize, Arabic and Hebrew (right to left)      | audio                                                    |
| unknown voice, ../../etc, /etc/passwd,             | error "unknown-voice"; no path outside the voices folder |
|   grandma/../grandma, NUL in name, ., .., ../outside |   is opened                                              |
| synthesize-chunk without synthesize-start          | error "protocol"                                         |
| two synthesize-start in a row                      | error "protocol"; the second stream is spoken            |
| synthesize-stop without synthesize-start           | error "protocol"                                         |
| the model raises during generation, either mode    | error "synthesis-failed"                                 |
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import DEVICE_ARGS, ROOT
from wyoming.client import AsyncClient
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from wyoming_helpers import read_until, tts_args

LONG_SENTENCE = "This single sentence is long enough to take many frames of speech to say out loud."
# no clause break, so it stays one sentence: several hundred frames, seconds of work for the tiny model
VERY_LONG_SENTENCE = " ".join(["and then the long story went on"] * 8) + "."


@pytest.fixture
def spoken(monkeypatch):
    """The text of every official call the engines make (whole sentences and frame streaming alike)."""
    from wyoming_qwen_tts.engine import TtsEngine

    calls = []
    original = TtsEngine._official_call

    def spy(self, text, voice, language, max_frames):
        calls.append(text)
        return original(self, text, voice, language, max_frames)

    monkeypatch.setattr(TtsEngine, "_official_call", spy)
    return calls


def ryan() -> SynthesizeVoice:
    return SynthesizeVoice(name="ryan")


def audio_of(events) -> bytes:
    return b"".join(e.payload or b"" for e in events if e.type == "audio-chunk")


async def say(server, text, voice="ryan"):
    async with server.client() as client:
        await client.write_event(Synthesize(text=text, voice=SynthesizeVoice(name=voice)).event())
        return await read_until(client, "audio-stop", "error")


async def assert_still_serving(server, case=""):
    events = await say(server, "Hi")  # short: the tiny model speaks to its frame cap
    types = [e.type for e in events]
    assert types[0] == "audio-start" and types[-1] == "audio-stop", (case, types)
    assert "audio-chunk" in types and audio_of(events), case


def error_code(events):
    assert events[-1].type == "error", [e.type for e in events]
    return events[-1].data["code"]


async def until(condition, timeout=30.0):
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# -- clients that leave ---------------------------------------------------------------------------


async def test_a_queued_sentence_of_a_client_that_left_never_runs(start_tts, spoken):
    server = await start_tts()
    manager = server.app.manager
    async with server.client() as reader:
        await reader.write_event(Synthesize(text=LONG_SENTENCE, voice=ryan()).event())
        await read_until(reader, "audio-chunk")  # the long reading holds the inference thread
        async with server.client() as leaver:
            await leaver.write_event(Synthesize(text="Never spoken.", voice=ryan()).event())
            # its reply holds the model, so its first sentence is queued behind the long one
            await until(lambda: manager.users("custom-voice") == 2)
        await asyncio.sleep(0.2)  # the server notices the leaver
    await manager.inference.run(lambda: None)  # whatever was queued before this has run or was dropped
    assert spoken == [LONG_SENTENCE]
    await assert_still_serving(server)


async def test_whole_sentence_mode_stops_a_sentence_when_the_client_leaves(start_tts):
    from wyoming_qwen_tts.engine import max_frames_for

    server = await start_tts("--no-frame-streaming")
    await server.app.manager.preload("custom-voice")
    inference = server.app.manager.inference
    async with server.client() as client:
        beats = inference.beats
        await client.write_event(Synthesize(text=VERY_LONG_SENTENCE, voice=ryan()).event())
        await until(lambda: inference.beats > beats + 10)  # generating, some frames in
    at_disconnect = inference.beats
    await until(lambda: not inference.busy, timeout=3.0)  # the whole sentence takes far longer
    # a frame or two after the disconnect, and the job's end
    assert inference.beats - at_disconnect <= 4
    assert inference.beats - beats < max_frames_for(VERY_LONG_SENTENCE) / 2
    await assert_still_serving(server)


@pytest.mark.parametrize("mode", [[], ["--no-frame-streaming"]], ids=["frame-streaming", "whole-sentences"])
async def test_every_generated_frame_beats_the_heartbeat(start_tts, mode):
    from wyoming_qwen_tts.engine import FRAME_SAMPLES, max_frames_for

    server = await start_tts(*mode)
    await server.app.manager.preload("custom-voice")
    inference = server.app.manager.inference
    beats = inference.beats
    events = await say(server, "Hi there.")
    assert events[-1].type == "audio-stop"
    # random weights usually run to the cap, but sampling may draw end-of-speech early: count the
    # frames from the audio (one frame is FRAME_SAMPLES samples; the job adds a beat at start and end)
    frames = sum(len(e.payload) for e in events if e.type == "audio-chunk") // (2 * FRAME_SAMPLES)
    assert 1 <= frames <= max_frames_for("Hi there.")
    assert inference.beats - beats >= frames


# -- voice references -----------------------------------------------------------------------------


def write_reference(folder: Path, case: str) -> None:
    folder.mkdir()
    (folder / "reference.txt").write_text("Hello world.")
    path = folder / "reference.wav"
    if case == "corrupt":
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio" + bytes(range(256)))
    elif case == "0.1 s":
        sf.write(path, np.zeros(2400, dtype=np.float32), 24000)
    else:  # 10 minutes, 16-bit at 16 kHz: 19 MB
        sf.write(path, np.zeros(10 * 60 * 16000, dtype=np.int16), 16000, subtype="PCM_16")


@pytest.mark.parametrize(
    "case, expected",
    [("corrupt", "cannot be read"), ("0.1 s", "0.10 s long"), ("10 min", "600.00 s long")],
    ids=["corrupt-is-voice-reference-error", "0.1s-is-voice-reference-error", "10min-is-voice-reference-error"],
)
async def test_an_unusable_reference_is_an_error_the_owner_can_act_on(
    start_tts, voices_dir, monkeypatch, case, expected
):
    from wyoming_qwen_tts.clone_prompts import MAX_REFERENCE_SECONDS, MIN_REFERENCE_SECONDS

    write_reference(voices_dir / "bad", case)
    reads = []
    original_read = sf.read
    monkeypatch.setattr(sf, "read", lambda path, *a, **k: reads.append(str(path)) or original_read(path, *a, **k))
    server = await start_tts()
    for request in ("synthesize", "stream"):
        async with server.client() as client:
            if request == "synthesize":
                await client.write_event(Synthesize(text="Hello.", voice=SynthesizeVoice(name="bad")).event())
            else:
                await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="bad")).event())
            events = await read_until(client, "error")
        assert error_code(events) == "voice-reference"
        text = events[-1].data["text"]
        assert "bad/reference.wav" in text and expected in text, text
        assert f"{MIN_REFERENCE_SECONDS:g} to {MAX_REFERENCE_SECONDS:g} s" in text, text
        await assert_still_serving(server, case)
    assert not [path for path in reads if "bad" in path], "the reference was read, not only its header"
    assert not server.app.manager.is_loaded("clone")


def test_the_clone_prompt_cache_checks_the_reference_before_computing(tmp_path):
    from wyoming_qwen_tts.clone_prompts import BadReference, ClonePromptCache

    write_reference(tmp_path / "short", "0.1 s")
    cache = ClonePromptCache("some-model")
    with pytest.raises(BadReference, match="0.10 s long"):
        cache.get(None, tmp_path / "short")  # no model: it must not get that far
    assert cache.computed == 0


async def test_a_full_disk_while_caching_the_clone_prompt_leaves_no_partial_file(tiny_dir, voices_dir, tmp_path):
    """A real server process whose files may not grow past 1 KiB (RLIMIT_FSIZE): the cache write
    fails with EFBIG (Python ignores SIGXFSZ), as it would on a full disk."""
    uri = f"unix://{tmp_path}/tts-fsize.sock"
    limit = 1024  # the tiny model's prompt is about 5 KiB

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wyoming_qwen_tts",
        "--uri",
        uri,
        "--no-gateway",
        *DEVICE_ARGS,
        *tts_args(tiny_dir, voices_dir),
        "--debug",
        stdout=asyncio.subprocess.PIPE,  # a pipe, not a file: the limit would cut the log too
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
        preexec_fn=limit_file_size,
    )
    log = []

    async def collect():
        async for line in process.stdout:
            log.append(line.decode(errors="replace"))

    collector = asyncio.create_task(collect())
    try:
        client = AsyncClient.from_uri(uri)
        async with asyncio.timeout(120):
            while True:
                assert process.returncode is None, "".join(log)
                with contextlib.suppress(OSError):
                    await client.connect()
                    await client.disconnect()
                    break
                await asyncio.sleep(0.1)
        server = type("Server", (), {"client": lambda self: AsyncClient.from_uri(uri)})()
        for _ in range(2):
            events = await say(server, "Hi.", voice="grandma")
            assert events[-1].type == "audio-stop" and audio_of(events), "".join(log)
        assert not list((voices_dir / "grandma").glob(".clone-prompt-*")), "a cache file was left behind"
        text = "".join(log)
        assert "kept in memory only" in text, text
        assert text.count("Computed the clone prompt") == 1, text  # the second request used memory
        await assert_still_serving(server)
    finally:
        if process.returncode is None:
            process.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), 20)
            if process.returncode is None:
                process.kill()
        await collector


# -- input --------------------------------------------------------------------------------------------


async def test_odd_texts(start_tts, spoken):
    from wyoming_qwen_tts.handler import MAX_TEXT_CHARS

    assert MAX_TEXT_CHARS < 100_000
    server = await start_tts()
    # (case, text, expected: "empty" | "audio" | an error code, the sentences the model must get)
    cases = [
        ("empty text: empty reply", "", "empty", []),
        ("100,000 characters: text-too-long", "Word. " * 16_667, "text-too-long", []),
        ("NUL and BEL only: empty reply", "\x00\x07\x00", "empty", []),
        (
            "ANSI colours, NUL, BEL: spoken without them",
            "\x1b[31mRed alert.\x1b[0m Bell\x07 and null\x00 here.",
            "audio",
            ["Red alert.", "Bell and null here."],
        ),
        ("emoji only: audio", "😀👍🏽", "audio", ["😀👍🏽"]),
        ("Latin + CJK + Cyrillic: audio", "Hi 你 да.", "audio", ["Hi 你 да."]),
        ("Arabic and Hebrew: audio", "سلام. שלום.", "audio", ["سلام.", "שלום."]),
    ]
    for case, text, expected, sentences in cases:
        spoken.clear()
        events = await say(server, text)
        types = [e.type for e in events]
        if expected == "empty":
            assert types == ["audio-start", "audio-stop"], (case, types)
        elif expected == "audio":
            assert types[0] == "audio-start" and types[-1] == "audio-stop" and audio_of(events), (case, types)
        else:
            assert error_code(events) == expected, case
        assert spoken == sentences, case
        await assert_still_serving(server, case)


@pytest.fixture
def opened_paths():
    """Paths opened or listed by this process while the list is being recorded (an audit hook)."""
    recorded = []
    recording = [False]

    def hook(event, args):
        if recording[0] and event in ("open", "os.listdir", "os.scandir") and args and args[0] is not None:
            recorded.append(os.fsdecode(args[0]) if isinstance(args[0], (str, bytes)) else str(args[0]))

    sys.addaudithook(hook)  # cannot be removed; it records nothing once the test is over
    recording[0] = True
    yield recorded
    recording[0] = False


async def test_voice_names_never_reach_a_path_outside_the_voices_folder(start_tts, voices_dir, opened_paths):
    outside = voices_dir.parent / "outside"
    write_reference(outside, "0.1 s")  # a voice folder beside the voices folder, never to be used
    server = await start_tts()
    opened_paths.clear()
    names = ["nobody", "../../etc", "/etc/passwd", "grandma/../grandma", "gran\x00dma", ".", "..", "../outside"]
    for name in names:
        events = await say(server, "Hello.", voice=name)
        assert error_code(events) == "unknown-voice", name
        assert "Available voices" in events[-1].data["text"], name
        await assert_still_serving(server, name)
    # where each name would lead if it were joined to the voices folder (other files, such as the model's
    # and /etc/os-release read while the model loads, are not the names' doing)
    targets = [(voices_dir / name).resolve() for name in names if "\x00" not in name]
    outside_the_folder = [t for t in targets if not t.is_relative_to(voices_dir)]
    assert outside_the_folder
    strays = [
        p
        for p in map(Path, opened_paths)
        if not p.resolve().is_relative_to(voices_dir) and any(p.resolve().is_relative_to(t) for t in outside_the_folder)
    ]
    assert not strays


async def test_protocol_misuse_gets_protocol_errors(start_tts, spoken):
    server = await start_tts()
    async with server.client() as client:
        await client.write_event(SynthesizeChunk(text="Hello.").event())
        events = await read_until(client, "error")
        assert error_code(events) == "protocol" and "without synthesize-start" in events[-1].data["text"]
    await assert_still_serving(server, "chunk without start")

    async with server.client() as client:
        await client.write_event(SynthesizeStop().event())
        events = await read_until(client, "error")
        assert error_code(events) == "protocol" and "without synthesize-start" in events[-1].data["text"]
    await assert_still_serving(server, "stop without start")

    spoken.clear()
    async with server.client() as client:
        await client.write_event(SynthesizeStart(voice=ryan()).event())
        await client.write_event(SynthesizeChunk(text="First, never finished").event())
        await client.write_event(SynthesizeStart(voice=ryan()).event())
        events = await read_until(client, "error")
        assert error_code(events) == "protocol" and "dropped" in events[-1].data["text"]
        await client.write_event(SynthesizeChunk(text="Second.").event())
        await client.write_event(SynthesizeStop().event())
        events = await read_until(client, "synthesize-stopped", "error")
    assert [e.type for e in events][-2:] == ["audio-stop", "synthesize-stopped"] and audio_of(events)
    assert spoken == ["Second."]
    await assert_still_serving(server, "two starts")


@pytest.mark.parametrize("mode", [[], ["--no-frame-streaming"]], ids=["frame-streaming", "whole-sentences"])
async def test_the_model_raising_is_synthesis_failed_and_the_next_request_works(start_tts, mode):
    server = await start_tts(*mode)
    await server.app.manager.preload("custom-voice")
    tts = server.app.manager.loaded("custom-voice").tts

    def broken(**_kwargs):
        del tts.generate_custom_voice  # once
        raise RuntimeError("rigged failure")

    tts.generate_custom_voice = broken
    events = await say(server, "Hello there.")
    assert error_code(events) == "synthesis-failed" and "rigged failure" in events[-1].data["text"]
    await assert_still_serving(server)


def test_whole_sentences_are_the_official_audio_and_can_stop(tiny_dir):
    import torch
    from qwen_tts import Qwen3TTSModel

    from wyoming_qwen_tts.engine import TtsEngine, max_frames_for
    from wyoming_qwen_tts.frames import GenerationStopped
    from wyoming_qwen_tts.voices import PRESET, Voice

    tts = Qwen3TTSModel.from_pretrained(str(tiny_dir / "tts-custom-voice"), dtype=torch.float32, device_map="cpu")
    engine = TtsEngine(tts, "tiny")
    voice = Voice(name="ryan", kind=PRESET, description="Ryan")
    torch.manual_seed(7)
    wavs, _ = tts.generate_custom_voice(
        text="Hi there.", speaker="ryan", language="english", max_new_tokens=max_frames_for("Hi there.") + 1
    )
    torch.manual_seed(7)
    ours = engine.synthesize("Hi there.", voice, "English", should_stop=lambda: False)
    assert np.array_equal(ours, np.asarray(wavs[0], dtype=np.float32))
    checks = []
    with pytest.raises(GenerationStopped):
        engine.synthesize("Hi there.", voice, "English", should_stop=lambda: checks.append(1) or len(checks) > 3)
    assert len(checks) == 4
