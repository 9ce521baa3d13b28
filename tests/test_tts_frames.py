"""Frame-level streaming: the official codes frame by frame, and an incremental decode equal to a full one."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from wyoming.tts import Synthesize, SynthesizeVoice

from shared.graphs import EagerGraphs
from wyoming_qwen_tts.frame_graphs import graphed_step_loop
from wyoming_qwen_tts.frames import GenerationStopped, generate_frames
from wyoming_qwen_tts.incremental_decoder import IncrementalDecoder
from wyoming_qwen_tts.step_loop import StepLoop

from official import official_codes
from wyoming_helpers import read_until

FRAMES = 40


@pytest.fixture(scope="module", params=["float32", "int8"])
def models(tiny_dir, request):
    """The three tiny models, as loaded (float32) or with `--quantize int8`: streaming is exact in both."""
    from qwen_tts import Qwen3TTSModel

    from shared.quantize import quantize_int8

    def load(name):
        tts = Qwen3TTSModel.from_pretrained(str(tiny_dir / name), dtype=torch.float32, device_map="cpu")
        if request.param == "int8":
            talker = tts.model.talker
            assert quantize_int8([talker.model, talker.code_predictor.model], name) > 0
        return tts

    return {"preset": load("tts-custom-voice"), "clone": load("tts-base"), "design": load("tts-voice-design")}


@pytest.fixture(scope="module")
def graphed_loops(models):
    """Each model's graphed step loop on the CPU stand-in (captured once, re-used by every test)."""
    return {kind: graphed_step_loop(tts, runtime=EagerGraphs(), capacity=256) for kind, tts in models.items()}


@pytest.fixture(scope="module")
def clone_prompt(models):
    rng = np.random.default_rng(4)
    reference = (0.2 * rng.standard_normal(2 * 24000)).astype(np.float32)
    return models["clone"].create_voice_clone_prompt(ref_audio=(reference, 24000), ref_text="Hello world.")


def official_call(models, clone_prompt, kind, sample):
    kwargs = dict(
        text="Hello world, the quick brown fox.",
        language="english",
        max_new_tokens=FRAMES + 1,
        do_sample=sample,
        subtalker_dosample=sample,
    )
    tts = models[kind]
    if kind == "preset":
        return tts, lambda: tts.generate_custom_voice(speaker="ryan", **kwargs)
    if kind == "clone":
        return tts, lambda: tts.generate_voice_clone(voice_clone_prompt=clone_prompt, **kwargs)
    return tts, lambda: tts.generate_voice_design(instruct="A calm voice.", **kwargs)


@pytest.mark.parametrize("loop", ["official-generate", "step-loop", "lean-step-loop", "graphed"])
@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "seeded-sampling"])
@pytest.mark.parametrize("kind", ["preset", "clone", "design"])
def test_frames_are_the_official_codes(models, graphed_loops, clone_prompt, kind, sample, loop):
    """Frame by frame, from the official generate (watched by a hook), from our step loop with static KV
    caches standing in for talker.generate (through the official forward, or through the lean decoder, as
    on a CPU), or from that loop's frame captured as a graph (on the CPU
    stand-in, which replays what a CUDA graph would): the official codes every way. The graph is captured
    with the checkpoint's sampling settings, so a greedy request runs the same steps eagerly."""
    tts, call = official_call(models, clone_prompt, kind, sample)
    expected = official_codes(tts, call, seed=11)
    step_loop = {
        "official-generate": None,
        "step-loop": StepLoop(tts.model.talker),
        "lean-step-loop": StepLoop(tts.model.talker, lean=True),
        "graphed": graphed_loops[kind],
    }[loop]
    replayed = step_loop.graphed_sentences if loop == "graphed" else 0
    frames = []
    torch.manual_seed(11)
    count = generate_frames(tts, call, frames.append, max_frames=FRAMES, step_loop=step_loop)
    assert count == len(frames) == len(expected) > 0
    assert torch.equal(torch.stack(frames), expected)
    if loop == "graphed":
        assert step_loop.graphed_sentences - replayed == (1 if sample else 0)


def test_generation_can_stop_between_two_frames(models, clone_prompt):
    tts, call = official_call(models, clone_prompt, "preset", False)
    frames = []
    with pytest.raises(GenerationStopped):
        generate_frames(tts, call, frames.append, max_frames=FRAMES, should_stop=lambda: len(frames) >= 3)
    assert len(frames) == 3


def incremental(decoder, codes, schedule, context_frames):
    inc = IncrementalDecoder(decoder, context_frames)
    pieces, start, i = [], 0, 0
    while start < len(codes):
        n = schedule[min(i, len(schedule) - 1)]
        pieces.append(inc.push(codes[start : start + n]))
        start, i = start + n, i + 1
    return np.concatenate(pieces)


@pytest.mark.parametrize("frames", [37, 300])
@pytest.mark.parametrize("schedule", [[1, 2, 4, 8, 12], [2, 4, 8], [5]], ids=str)
def test_incremental_decode_equals_one_full_decode(models, frames, schedule):
    speech_tokenizer = models["preset"].model.speech_tokenizer
    codes = torch.randint(0, 2048, (frames, 16), generator=torch.Generator().manual_seed(frames))
    full = speech_tokenizer.decode([{"audio_codes": codes}])[0][0]
    got = incremental(speech_tokenizer.model.decoder, codes, schedule, context_frames=16)
    assert got.shape == full.shape
    assert np.abs(got - full).max() < 1e-4


def test_a_padded_last_chunk_gives_the_same_audio(models):
    """The last chunk of a sentence is padded to its scheduled size (so a GPU sees few input lengths): its audio
    is still exactly that of the real frames (the decoder is causal)."""
    speech_tokenizer = models["preset"].model.speech_tokenizer
    codes = torch.randint(0, 2048, (30, 16), generator=torch.Generator().manual_seed(3))
    full = speech_tokenizer.decode([{"audio_codes": codes}])[0][0]
    inc = IncrementalDecoder(speech_tokenizer.model.decoder)
    pieces = [inc.push(codes[:1]), inc.push(codes[1:5]), inc.push(codes[5:13]), inc.push(codes[13:25])]
    pieces.append(inc.push(codes[25:], pad_to=12))  # 5 real frames, decoded as 12
    got = np.concatenate(pieces)
    assert got.shape == full.shape
    assert np.abs(got - full).max() < 1e-4


def test_the_convolution_stack_carries_its_state_instead_of_recomputing_context(models):
    """From a cold start every frame passes through the convolution stack once (no frames of context are
    run again), and the audio is still that of one full decode."""
    speech_tokenizer = models["preset"].model.speech_tokenizer
    decoder = speech_tokenizer.model.decoder
    codes = torch.randint(0, 2048, (60, 16), generator=torch.Generator().manual_seed(1))
    full = speech_tokenizer.decode([{"audio_codes": codes}])[0][0]
    first_upsampling = decoder.upsample[0][0].conv  # kernel = stride: a frame's output overlaps no other's
    frames_in = []
    hook = first_upsampling.register_forward_hook(lambda _m, inputs, _out: frames_in.append(inputs[0].shape[-1]))
    try:
        got = incremental(decoder, codes, [1, 2, 4, 8], context_frames=16)
    finally:
        hook.remove()
    assert sum(frames_in) == len(codes), frames_in
    assert np.abs(got - full).max() < 1e-4


def test_a_too_short_context_after_priming_fails_the_same_check(models, clone_prompt):
    """A primed decoder starts its convolution stack over `context_frames` frames of the reference: 2 are
    too few to reproduce the official audio, which is why 16 are kept."""
    speech_tokenizer = models["clone"].model.speech_tokenizer
    reference = clone_prompt[0].ref_code
    codes = torch.randint(0, 2048, (20, 16), generator=torch.Generator().manual_seed(2))
    full = speech_tokenizer.decode([{"audio_codes": torch.cat([reference, codes])}])[0][0]
    expected = full[len(reference) * 1920 :]
    decoder = IncrementalDecoder(speech_tokenizer.model.decoder, context_frames=2)
    decoder.prime(reference)
    got = np.concatenate([decoder.push(codes[i : i + 4]) for i in range(0, len(codes), 4)])
    assert np.abs(got - expected).max() > 1e-4


def test_cloned_voice_decoder_primed_with_the_reference(models, clone_prompt):
    speech_tokenizer = models["clone"].model.speech_tokenizer
    reference = clone_prompt[0].ref_code
    codes = torch.randint(0, 2048, (50, 16), generator=torch.Generator().manual_seed(2))
    # the official path decodes reference + new codes and drops the reference's audio
    full = speech_tokenizer.decode([{"audio_codes": torch.cat([reference, codes])}])[0][0]
    expected = full[len(reference) * 1920 :]
    decoder = IncrementalDecoder(speech_tokenizer.model.decoder)
    decoder.prime(reference)
    got = np.concatenate([decoder.push(codes[i : i + 4]) for i in range(0, len(codes), 4)])
    assert np.abs(got - expected).max() < 1e-4


def test_by_default_the_first_audio_goes_out_after_one_frame(models):
    """On a CPU too (the official loop, no graphs): the first chunk is one frame, then 4, 8 and 12."""
    from wyoming_qwen_tts.engine import FRAME_SAMPLES, TtsEngine
    from wyoming_qwen_tts.voices import PRESET, Voice

    engine = TtsEngine(models["preset"], "tiny")
    sizes = []
    torch.manual_seed(0)
    frames = engine.stream(LONG_SENTENCE, Voice("ryan", PRESET, "ryan"), "english", lambda a: sizes.append(len(a)))
    assert frames > 1 + 4 + 8 + 12, frames
    assert sizes[:4] == [FRAME_SAMPLES, 4 * FRAME_SAMPLES, 8 * FRAME_SAMPLES, 12 * FRAME_SAMPLES]


# -- over the socket -----------------------------------------------------------------------------

LONG_SENTENCE = "This single sentence is long enough to take many frames of speech to say out loud."


def engine_of(server, key="custom-voice"):
    return server.app.manager.loaded(key)


@pytest.mark.asyncio
async def test_first_audio_arrives_while_later_frames_are_generated(start_tts):
    from wyoming_qwen_tts.engine import FRAME_SAMPLES, max_frames_for

    server = await start_tts()  # the default first chunk: one frame
    async with server.client() as client:
        await client.write_event(Synthesize(text=LONG_SENTENCE, voice=SynthesizeVoice(name="ryan")).event())
        events = await read_until(client, "audio-chunk", timeout=60)
        progress_at_first_audio = engine_of(server).frames_generated
        events += await read_until(client, "audio-stop", timeout=120)
    # random weights mostly run to the cap, but sampling may draw end-of-speech early: count from the audio
    total = sum(len(e.payload or b"") for e in events if e.type == "audio-chunk") // 2 // FRAME_SAMPLES
    assert engine_of(server).frames_generated == total <= max_frames_for(LONG_SENTENCE)
    assert total >= 20, total
    assert progress_at_first_audio < total / 2, (progress_at_first_audio, total)
    assert len([e for e in events if e.type == "audio-chunk"]) > 5


@pytest.mark.asyncio
async def test_disconnect_stops_generation_within_one_frame(start_tts):
    server = await start_tts()
    async with server.client() as client:
        await client.write_event(Synthesize(text=LONG_SENTENCE, voice=SynthesizeVoice(name="ryan")).event())
        await read_until(client, "audio-chunk", timeout=60)
    at_disconnect = engine_of(server).frames_generated
    await asyncio.sleep(2.0)  # tens of frames' time for the tiny model
    stopped_at = engine_of(server).frames_generated
    assert stopped_at - at_disconnect <= 2, (at_disconnect, stopped_at)


@pytest.mark.asyncio
async def test_whole_sentence_mode_still_available(start_tts):
    server = await start_tts("--no-frame-streaming")
    async with server.client() as client:
        await client.write_event(Synthesize(text="Hello there.", voice=SynthesizeVoice(name="ryan")).event())
        events = await read_until(client, "audio-stop", timeout=60)
    assert engine_of(server).frames_generated == 0  # the frame path was not used
    assert any(e.type == "audio-chunk" for e in events)
