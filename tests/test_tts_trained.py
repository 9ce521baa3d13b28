"""Behaviour that only trained weights show: sentences that end naturally, and utterances past 300 frames.

Random weights almost never sample end-of-speech, so `trained_fixtures_tts.stop_after` makes the tiny
models end each utterance after a chosen number of frames, as trained ones do.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from trained_fixtures_tts import DecodeCounter, stop_after
from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from wyoming_qwen_tts.engine import FRAME_SAMPLES, TtsEngine
from wyoming_qwen_tts.step_loop import StepLoop
from wyoming_qwen_tts.voices import CLONE, PRESET, Voice

from wyoming_helpers import read_until

RYAN = Voice(name="ryan", kind=PRESET, description="Ryan")
TEXT = "Hello world, the quick brown fox."
NATURAL_FRAMES = 20  # well under the cap for TEXT, so the sentence ends by itself


@pytest.fixture(scope="module")
def models(tiny_dir):
    from qwen_tts import Qwen3TTSModel

    def load(name):
        return Qwen3TTSModel.from_pretrained(str(tiny_dir / name), dtype=torch.float32, device_map="cpu")

    return {PRESET: load("tts-custom-voice"), CLONE: load("tts-base")}


def voice_of(kind, voices_dir):
    if kind == PRESET:
        return RYAN
    return Voice(name="grandma", kind=CLONE, description="grandma", folder=voices_dir / "grandma")


def engine_for(models, kind, frames, loop="official"):
    """An engine whose model ends every utterance naturally after `frames` frames; its frames come from the
    official `generate`, or from the lean step loop (what a CPU server runs)."""
    tts = models[kind]
    step_loop = StepLoop(tts.model.talker, lean=True) if loop == "lean" else None
    engine = TtsEngine(tts, f"tiny-{kind}", step_loop=step_loop)
    stop_after(engine.tts, frames, step_loop)
    return engine


def unpatch(engine):
    """Put the shared model back as loaded."""
    talker = engine.tts.model.talker
    if "generate" in talker.__dict__:
        del talker.generate
    speech_tokenizer = engine.tts.model.speech_tokenizer
    if "decode" in speech_tokenizer.__dict__:
        del speech_tokenizer.decode


@pytest.fixture
def engines(models):
    made = []

    def make(kind, frames, loop="official"):
        made.append(engine_for(models, kind, frames, loop))
        return made[-1]

    yield make
    for engine in made:
        unpatch(engine)


def official_with_codes(engine, voice, text, max_frames, seed):
    """The official wrapper call (its own decode included): audio and the codes `model.generate` returned."""
    captured = []
    model = engine.tts.model
    original = model.generate

    def spy(*args, **kwargs):
        codes, hidden = original(*args, **kwargs)
        captured.append(codes[0])
        return codes, hidden

    model.generate = spy
    try:
        torch.manual_seed(seed)
        wavs, _rate = engine._official_call(text, voice, "english", max_frames)()
    finally:
        del model.generate
    return np.asarray(wavs[0], dtype=np.float32), captured[0]


def streamed(engine, voice, text, seed):
    pieces = []
    torch.manual_seed(seed)
    frames = engine.stream(text, voice, "english", pieces.append)
    return np.concatenate(pieces), frames


# -- 1. a natural stop decodes nothing twice ------------------------------------------------------


@pytest.mark.parametrize("loop", ["official", "lean"])
@pytest.mark.parametrize("kind", [PRESET, CLONE])
def test_natural_stop_runs_no_full_decode_and_streams_the_official_audio(engines, voices_dir, kind, loop):
    from wyoming_qwen_tts.engine import max_frames_for

    engine = engines(kind, NATURAL_FRAMES, loop)
    voice = voice_of(kind, voices_dir)
    decodes = DecodeCounter(engine.tts.model.speech_tokenizer)

    ours, frames = streamed(engine, voice, TEXT, seed=3)
    assert frames == NATURAL_FRAMES < max_frames_for(TEXT)  # it ended by itself, not at the cap
    assert len(decodes) == 0, "the wrapper's full decode ran after a natural stop"

    official, codes = official_with_codes(engine, voice, TEXT, max_frames_for(TEXT), seed=3)
    assert len(decodes) == 1  # the official call decodes once
    assert len(codes) == NATURAL_FRAMES
    assert ours.shape == official.shape == (NATURAL_FRAMES * FRAME_SAMPLES,)
    assert np.abs(ours - official).max() < 1e-4


# -- over the socket: a streamed reply of two sentences that end naturally -----------------------


@pytest.mark.asyncio
async def test_next_sentence_starts_at_once_after_a_natural_stop(start_tts, monkeypatch):
    log = []  # ("frame" | "generate" | "decode", time)
    original_load = TtsEngine.load.__func__

    def load(cls, *args, **kwargs):
        engine = original_load(cls, *args, **kwargs)
        loop = engine.step_loop  # on a CPU, the lean step loop
        assert loop is not None and loop.lean
        stop_after(engine.tts, NATURAL_FRAMES, loop)
        frames = loop.frames

        def logged_frames(**kw):
            log.append(("generate", time.monotonic()))
            for codes in frames(**kw):
                log.append(("frame", time.monotonic()))
                yield codes

        loop.frames = logged_frames
        counter = DecodeCounter(engine.tts.model.speech_tokenizer)
        counted = engine.tts.model.speech_tokenizer.decode

        def decode(*a, **kw):
            log.append(("decode", time.monotonic()))
            return counted(*a, **kw)

        engine.tts.model.speech_tokenizer.decode = decode
        engine.decodes = counter
        return engine

    monkeypatch.setattr(TtsEngine, "load", classmethod(load))
    server = await start_tts()
    async with server.client() as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="ryan")).event())
        await client.write_event(
            SynthesizeChunk(text="The first sentence is here. The second one follows it. ").event()
        )
        await client.write_event(SynthesizeStop().event())
        events = await read_until(client, "synthesize-stopped", "error", timeout=120)
    assert events[-1].type == "synthesize-stopped"
    engine = server.app.manager.loaded("custom-voice")
    kinds = [kind for kind, _ in log]
    assert kinds.count("generate") == 2 and kinds.count("frame") == 2 * NATURAL_FRAMES, kinds
    assert len(engine.decodes) == 0 and "decode" not in kinds, kinds
    # nothing runs between the first sentence's last frame and the second sentence's generation
    second = kinds.index("generate", 1)
    assert kinds[second - 1] == "frame"
    gap = log[second + 1][1] - log[second - 1][1]  # last frame of sentence 1 -> first frame of sentence 2
    audio = b"".join(e.payload or b"" for e in events if e.type == "audio-chunk")
    assert len(audio) == 2 * NATURAL_FRAMES * FRAME_SAMPLES * 2
    print(f"last frame of sentence 1 -> first frame of sentence 2: {gap * 1000:.1f} ms")


# -- 2. past 300 frames: a true full decode, not the official 300-frame chunked decode ------------

LONG_FRAMES = 600
CHUNK = 300  # the official decode's chunk (chunked_decode: 300 frames, 25 of left context)


@pytest.mark.parametrize("kind", [PRESET, CLONE])
def test_past_300_frames_the_audio_is_one_full_decode(engines, voices_dir, monkeypatch, kind):
    import wyoming_qwen_tts.engine

    monkeypatch.setattr(wyoming_qwen_tts.engine, "max_frames_for", lambda _text: LONG_FRAMES + 50)  # a raised cap
    engine = engines(kind, LONG_FRAMES)
    voice = voice_of(kind, voices_dir)
    st = engine.tts.model.speech_tokenizer
    reference = engine.clone_prompts.get(engine.tts, voice.folder)[0].ref_code if kind == CLONE else None
    before = 0 if reference is None else len(reference)

    # one generation (600 frames take a while on CPU): our stream, and the codes `model.generate` returned
    model = engine.tts.model
    captured = []
    original = model.generate
    model.generate = lambda *a, **kw: captured.append(original(*a, **kw)) or captured[-1]
    try:
        ours, frames = streamed(engine, voice, TEXT, seed=7)
    finally:
        del model.generate
    codes = captured[0][0][0]
    # the official wrapper given those codes: its own decode (chunked) and, for a clone, its cut
    model.generate = lambda *a, **kw: captured[0]
    try:
        wavs, _rate = engine._official_call(TEXT, voice, "english", LONG_FRAMES + 50)()
    finally:
        del model.generate
    official = np.asarray(wavs[0], dtype=np.float32)
    assert frames == len(codes) == LONG_FRAMES

    # ours is the decoder run once over everything (reference included)
    everything = codes if reference is None else torch.cat([reference, codes])
    with torch.inference_mode():
        full = st.model.decoder(everything.transpose(0, 1).unsqueeze(0).clamp(min=0))[0, 0].numpy()
    full = full[before * FRAME_SAMPLES :]
    assert ours.shape == full.shape == official.shape == (LONG_FRAMES * FRAME_SAMPLES,)
    assert np.abs(ours - full).max() < 1e-4

    # the official audio is the same up to the first 300 frames decoded (reference included) ...
    split = (CHUNK - before) * FRAME_SAMPLES
    assert np.abs(ours[:split] - official[:split]).max() < 1e-4
    # ... and differs after that (each 300-frame chunk sees only 25 frames before it)
    past = float(np.abs(ours[split:] - official[split:]).max())
    peak = float(np.abs(official[split:]).max())
    print(f"{kind}: max |ours - official chunked decode| past frame 300: {past:.4f} (peak {peak:.4f})")
    assert past > 1e-3
