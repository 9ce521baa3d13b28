"""The TTS server over real sockets with the `wyoming` client."""

from __future__ import annotations

import asyncio
import time

import pytest
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from wyoming_helpers import read_until

pytestmark = pytest.mark.asyncio


@pytest.fixture
def spoken(monkeypatch):
    """Every sentence the engine synthesizes for a client: (text, voice name, voice kind, language). The warm-up
    a load runs on a GPU (one tiny sentence) is not a client's and is left out."""
    from wyoming_qwen_tts.engine import TtsEngine

    calls = []
    original = TtsEngine._official_call  # both whole-sentence and frame streaming go through it
    original_warm_up = TtsEngine.warm_up

    def spy(self, text, voice, language, max_frames):
        if not getattr(self, "warming_up", False):
            calls.append((text, voice.name, self.kind, language))
        return original(self, text, voice, language, max_frames)

    def warm_up(self):
        self.warming_up = True
        try:
            original_warm_up(self)
        finally:
            self.warming_up = False

    monkeypatch.setattr(TtsEngine, "_official_call", spy)
    monkeypatch.setattr(TtsEngine, "warm_up", warm_up)
    return calls


def audio_of(events):
    starts = [e for e in events if e.type == "audio-start"]
    data = b"".join(e.payload or b"" for e in events if e.type == "audio-chunk")
    return starts, data


async def say(server, text, voice=None):
    async with server.client() as client:
        await client.write_event(Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice else None).event())
        return await read_until(client, "audio-stop", "error")


async def stream(server, pieces, voice=None, compat=True, delay=0.0):
    async with server.client() as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name=voice) if voice else None).event())
        for piece in pieces:
            await client.write_event(SynthesizeChunk(text=piece).event())
            if delay:
                await asyncio.sleep(delay)
        if compat:
            await client.write_event(Synthesize(text="".join(pieces)).event())
        await client.write_event(SynthesizeStop().event())
        return await read_until(client, "synthesize-stopped", "error")


async def test_describe_lists_all_three_kinds_and_rereads_the_folder(start_tts, voices_dir):
    server = await start_tts()

    async def voices():
        async with server.client() as client:
            await client.write_event(Describe().event())
            info = Info.from_event((await read_until(client, "info"))[-1])
        (program,) = info.tts
        assert program.name == "qwen3-tts" and program.supports_synthesize_streaming is True
        return {v.name: v for v in program.voices}

    listed = await voices()
    assert {"ryan", "vivian", "eric", "grandma", "narrator"} <= set(listed)
    assert listed["narrator"].languages == ["en"] and "calm male narrator" in listed["narrator"].description
    assert {"en", "zh", "de"} <= set(listed["ryan"].languages)
    assert all(v.description for v in listed.values())
    new = voices_dir / "robot"
    new.mkdir()
    (new / "description.txt").write_text("A metallic robot voice.")
    assert "robot" in await voices()
    for key in ("custom-voice", "clone", "design"):
        assert not server.app.manager.is_loaded(key), "describe must not load models"


async def test_one_synthesize_of_three_sentences(start_tts, spoken):
    server = await start_tts()
    events = await say(server, "Hello there. How are you? Fine, thanks.", voice="ryan")
    starts, pcm = audio_of(events)
    assert [e.type for e in events][0] == "audio-start" and events[-1].type == "audio-stop"
    assert [(s.data["rate"], s.data["width"], s.data["channels"]) for s in starts] == [(24000, 2, 1)]
    assert len(pcm) > 0 and len(pcm) % 2 == 0
    assert [c[0] for c in spoken] == ["Hello there.", "How are you?", "Fine, thanks."]
    assert all(c[1] == "ryan" and c[2] == "custom_voice" for c in spoken)


@pytest.mark.parametrize("compat", [True, False], ids=["home-assistant", "bare"])
async def test_streaming_with_and_without_the_compat_synthesize(start_tts, spoken, compat):
    server = await start_tts()
    pieces = ["Hel", "lo there. How ", "are you? Fi", "ne."]
    events = await stream(server, pieces, compat=compat)
    assert events[-1].type == "synthesize-stopped"
    assert events[-2].type == "audio-stop"
    starts, pcm = audio_of(events)
    assert len(starts) == 1 and starts[0].data["rate"] == 24000 and len(pcm) > 0
    # every sentence spoken exactly once: the compat synthesize added nothing
    assert [c[0] for c in spoken] == ["Hello there.", "How are you?", "Fine."]


async def test_first_audio_arrives_before_synthesize_stop(start_tts):
    server = await start_tts()
    async with server.client() as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="Hi there. ").event())
        await client.write_event(SynthesizeChunk(text="This is the second").event())
        # the LLM is still "writing": wait for audio before sending more
        events = await read_until(client, "audio-chunk", timeout=60)
        assert events[0].type == "audio-start"
        await client.write_event(SynthesizeChunk(text=" sentence.").event())
        await client.write_event(SynthesizeStop().event())
        events += await read_until(client, "synthesize-stopped")
    assert events[-1].type == "synthesize-stopped"


async def test_cloned_voice_prompt_is_computed_once_and_rebuilt_on_change(start_tts, spoken, monkeypatch, voices_dir):
    from qwen_tts import Qwen3TTSModel

    computed = []
    original = Qwen3TTSModel.create_voice_clone_prompt

    def spy(self, *args, **kwargs):
        computed.append(kwargs.get("ref_text"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Qwen3TTSModel, "create_voice_clone_prompt", spy)
    server = await start_tts()
    for _ in range(2):
        events = await say(server, "Hi there.", voice="grandma")
        assert events[-1].type == "audio-stop" and audio_of(events)[1]
    assert len(computed) == 1
    assert list((voices_dir / "grandma").glob(".clone-prompt-*.safetensors"))
    # a restart: a new server process state, same voices folder
    restarted = await start_tts()
    events = await say(restarted, "Hi again.", voice="grandma")
    assert events[-1].type == "audio-stop" and len(computed) == 1
    assert spoken[-1][2] == "base"
    # a new reference text is a new voice prompt
    (voices_dir / "grandma" / "reference.txt").write_text("Another reference text.")
    events = await say(restarted, "Hi once more.", voice="grandma")
    assert events[-1].type == "audio-stop" and computed == [computed[0], "Another reference text."]


async def test_designed_voice_uses_the_design_model_with_its_description(start_tts, spoken, monkeypatch):
    from qwen_tts import Qwen3TTSModel

    received = []
    original = Qwen3TTSModel.generate_voice_design

    def spy(self, text, instruct, **kwargs):
        received.append((text, instruct, self.model.tts_model_type, kwargs.get("language")))
        return original(self, text=text, instruct=instruct, **kwargs)

    monkeypatch.setattr(Qwen3TTSModel, "generate_voice_design", spy)
    server = await start_tts()
    events = await say(server, "Once upon a time.", voice="narrator")
    assert events[-1].type == "audio-stop"
    assert received == [("Once upon a time.", "A deep, calm male narrator.", "voice_design", "english")]
    assert server.app.manager.is_loaded("design") and not server.app.manager.is_loaded("custom-voice")


async def test_language_comes_from_request_then_voice_then_default(start_tts, spoken):
    server = await start_tts("--language", "de")
    async with server.client() as client:
        # the wyoming library sends a request language only without a voice name
        await client.write_event(Synthesize(text="Ni hao.", voice=SynthesizeVoice(language="zh")).event())
        await read_until(client, "audio-stop")
    await say(server, "Guten Tag.", voice="ryan")
    await say(server, "Hello.", voice="narrator")
    # the one language table spells names as Qwen3-ASR does; qwen-tts gets them in lower case (see above)
    assert [(c[1], c[3]) for c in spoken] == [("ryan", "Chinese"), ("ryan", "German"), ("narrator", "English")]


async def test_generation_is_capped_by_text_length(start_tts):
    from wyoming_qwen_tts.engine import FRAME_SAMPLES, max_frames_for

    server = await start_tts()
    events = await say(server, "Hi there.", voice="ryan")
    _, pcm = audio_of(events)
    # random weights never stop by themselves: the cap did
    assert len(pcm) // 2 == max_frames_for("Hi there.") * FRAME_SAMPLES


async def test_two_rooms_short_request_is_not_stuck_behind_a_long_one(start_tts):
    server = await start_tts()
    long_text = " ".join(f"Sentence number {i} is here." for i in range(6))
    timeline = {}

    async def room(name, text):
        async with server.client() as client:
            await client.write_event(Synthesize(text=text).event())
            while True:
                event = await client.read_event()
                if event.type == "audio-chunk" and f"{name}-first" not in timeline:
                    timeline[f"{name}-first"] = time.monotonic()
                if event.type == "audio-stop":
                    timeline[f"{name}-done"] = time.monotonic()
                    return

    long_room = asyncio.create_task(room("long", long_text))
    await asyncio.sleep(0.5)  # the long reading is under way
    await room("short", "Hi.")
    await long_room
    assert timeline["short-first"] < timeline["long-done"]


# -- errors -----------------------------------------------------------------------------------


async def test_unknown_voice_names_the_available_ones(start_tts):
    server = await start_tts()
    events = await say(server, "Hello.", voice="nobody")
    assert events[-1].type == "error"
    text = events[-1].data["text"]
    assert "nobody" in text and "ryan" in text and "grandma" in text and "narrator" in text
    events = await stream(server, ["Hello."], voice="../../etc")
    assert events[-1].type == "error" and "Available voices" in events[-1].data["text"]


async def test_empty_text_gives_empty_well_formed_replies(start_tts, spoken):
    server = await start_tts()
    assert [e.type for e in await say(server, "   ")] == ["audio-start", "audio-stop"]
    assert [e.type for e in await stream(server, [])] == ["audio-start", "audio-stop", "synthesize-stopped"]
    assert spoken == []


async def test_text_over_the_limit_is_an_error(start_tts, spoken):
    from wyoming_qwen_tts.handler import MAX_TEXT_CHARS

    server = await start_tts()
    events = await say(server, "Word. " * (MAX_TEXT_CHARS // 5))
    assert events[-1].type == "error" and str(MAX_TEXT_CHARS) in events[-1].data["text"]
    events = await stream(server, ["Word. " * 500] * 3)
    assert events[-1].type == "error" and str(MAX_TEXT_CHARS) in events[-1].data["text"]
    assert len(spoken) <= 1  # nothing (or the sentence already running) was spoken
    events = await say(server, "Still serving.")
    assert events[-1].type == "audio-stop"


async def test_disconnect_mid_stream_cancels_pending_sentences(start_tts, spoken):
    server = await start_tts()
    async with server.client() as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(
            SynthesizeChunk(text="One is here. Two is here. Three is here. Four is here. ").event()
        )
        await read_until(client, "audio-chunk")
    await asyncio.sleep(3)
    # at most the sentence that was running when the client left was finished
    assert len(spoken) <= 2
    events = await say(server, "Still serving.")
    assert events[-1].type == "audio-stop"


async def test_unknown_events_are_ignored_and_out_of_order_or_malformed_ones_are_errors(start_tts):
    server = await start_tts()
    async with server.client() as client:
        await client.write_event(Event(type="make-coffee"))
        await client.write_event(Describe().event())
        assert [e.type for e in await read_until(client, "info")] == ["info"]  # nothing for make-coffee
        await client.write_event(Event(type="synthesize-chunk", data={}))  # no text
        error = (await read_until(client, "error"))[-1]
        assert error.data["code"] == "malformed-event" and "synthesize-chunk" in error.data["text"]
        await client.write_event(SynthesizeChunk(text="Hello.").event())
        assert "without synthesize-start" in (await read_until(client, "error"))[-1].data["text"]
        await client.write_event(Describe().event())
        assert (await read_until(client, "info"))[-1].type == "info"


async def test_no_streaming_is_not_advertised(start_tts, monkeypatch):
    monkeypatch.setenv("QWEN_TTS_NO_STREAMING", "true")
    server = await start_tts()
    async with server.client() as client:
        await client.write_event(Describe().event())
        info = Info.from_event((await read_until(client, "info"))[-1])
    assert info.tts[0].supports_synthesize_streaming is False
    events = await say(server, "Still speaks.")
    assert events[-1].type == "audio-stop" and audio_of(events)[1]
