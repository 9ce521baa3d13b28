"""The ASR server with output a trained Qwen3-ASR writes: headers, natural ends, repetition loops.

Also the engine's tensors stay on the model's device, and our output parsing agrees with the official one.
"""

from __future__ import annotations

import asyncio
import random
import sys

import numpy as np
import pytest
import torch
from qwen_asr.inference.utils import detect_and_fix_repetitions, parse_asr_output
from torch.overrides import TorchFunctionMode
from trained_fixtures_asr import looping_script, natural_script, scripted_asr  # noqa: F401
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop

from wyoming_qwen_asr.streaming import committed_text, final_text, split_output

from wyoming_helpers import read_until, speechlike

# -- tensors on the model's device -----------------------------------------------------------------

FACTORIES = {
    torch.full,
    torch.tensor,
    torch.as_tensor,
    torch.ones,
    torch.zeros,
    torch.arange,
    torch.empty,
    torch.rand,
    torch.randn,
    torch.eye,
    torch.linspace,
}
# Built only for CPU engines (`AsrEngine.__init__`), so its tensors are on the right device anyway.
CPU_ONLY_MODULES = {"wyoming_qwen_asr.encoder_cache"}


class FactorySpy(TorchFunctionMode):
    """Records every tensor factory called from `wyoming_qwen_asr` code, with whether it named a device."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, str, int, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            frame = sys._getframe(1)
            module = frame.f_globals.get("__name__", "")
            if module.startswith("wyoming_qwen_asr") and module not in CPU_ONLY_MODULES:
                name = getattr(func, "__name__", str(func))
                self.calls.append((name, module, frame.f_lineno, kwargs.get("device") is not None))
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def engine(asr_model_dir):
    from wyoming_qwen_asr.engine import AsrEngine

    return AsrEngine.load(asr_model_dir, "cpu", torch.float32)


def test_engine_tensors_name_their_device(engine):
    """Every tensor the engine creates during decoding names its device explicitly (or is a `*_like`).

    CI has no GPU, so a tensor created on the CPU by default while the model runs on CUDA goes unnoticed
    on CPU runs: the abort flag of the stopping criterion did exactly that, and transformers ORs it with
    its own flags on the model's device, so every decode step raised on CUDA. This spy catches the whole
    class of mistake on the CPU: a factory call from our code without `device=` fails here.
    """
    audio = np.frombuffer(speechlike(1.0), dtype=np.int16).astype(np.float32) / 32768.0
    prompt = engine.prompt("", None)
    spy = FactorySpy()
    with spy:
        first = engine.decode(audio, prompt, max_new_tokens=4, should_stop=lambda: False)  # a streaming step
        engine.decode(audio, prompt, first[:2], max_new_tokens=4, should_stop=lambda: False)  # with a prefix
        engine.decode(audio, prompt, first[:2], max_new_tokens=4, should_stop=lambda: True)  # aborted
        engine.decode(audio, prompt, first[:2], max_new_tokens=4)  # a final step
    assert any(name == "full" for name, *_ in spy.calls), "the spy saw no stopping flag"
    assert any(name == "tensor" for name, *_ in spy.calls), "the spy saw no prefix tensor"
    missing = [call for call in spy.calls if not call[3]]
    assert not missing, f"tensors created without device=: {missing}"


# -- parsing as the official code does ---------------------------------------------------------------

PARSE_CASES = [
    ("language English<asr_text>Hello world.", None),
    ("language Chinese\n<asr_text>你好。", None),
    ("  language english<asr_text>  spaced out  ", None),
    ("language None<asr_text>", None),
    ("language None<asr_text>stray words", None),
    ("Hello without any tag", None),
    ("", None),
    ("   ", None),
    ("<asr_text>only the tag", None),
    ("language Chinese,English<asr_text>混合 mixed", None),
    ("language English<asr_text>", None),
    ("Forced language output.", "English"),
    ("  forced with spaces ", "German"),
    ("language English<asr_text>hello" + " the" * 30, None),
    ("x" * 40 + " tail", None),
    ("hello" + " la" * 25 + " end", "English"),
]


@pytest.mark.parametrize("raw,forced", PARSE_CASES)
def test_final_text_is_the_official_parse(raw, forced):
    language, text = parse_asr_output(raw, user_language=forced)
    assert final_text(raw, forced) == (language or None, text)


@pytest.mark.parametrize("raw,forced", [case for case in PARSE_CASES if "<asr_text>" in case[0] or case[1]])
def test_streamed_language_and_text_agree_with_the_official_parse(raw, forced):
    language, text = parse_asr_output(raw, user_language=forced)
    streamed_language, streamed_text = split_output(raw, forced)
    assert (streamed_language or "") == language
    assert text.startswith(committed_text(raw, forced)[1])
    if detect_and_fix_repetitions(raw.strip()) == raw.strip():
        assert streamed_text.strip() == text


def test_committed_text_is_never_removed_by_the_repetition_fix():
    """Whatever follows, the official parse of the whole output starts with the text committed so far."""
    rng = random.Random(0)
    for _ in range(1500):
        patterns = ["".join(rng.choice("ab ") for _ in range(rng.randint(1, 4))) for _ in range(3)]
        body = "".join(rng.choice(patterns) * rng.choice([1, 1, 2, 5, 25]) for _ in range(rng.randint(1, 8)))
        raw = "language English<asr_text>" + body
        final = parse_asr_output(raw)[1]
        for cut in range(0, len(raw), 5):
            committed = committed_text(raw[:cut], None)[1]
            assert final.startswith(committed), (raw[:cut], raw)


def test_committed_text_holds_back_a_loop():
    raw = "language English<asr_text>hello" + " the" * 12
    assert committed_text(raw, None) == ("English", "hello the")
    assert committed_text("language English<asr_text>hello world", None) == ("English", "hello world")


# -- a trained model over the protocol -------------------------------------------------------------


async def _wait_for_step_over(model, samples: int, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not any(call.samples >= samples for call in model.calls):
            await asyncio.sleep(0.02)


async def _drain(client) -> list:
    events = []
    while True:
        try:
            events.append(await asyncio.wait_for(client.read_event(), timeout=0.2))
        except asyncio.TimeoutError:
            return events


async def _stream_in_two_steps(server, model, pcm: bytes):
    """Half the audio, a step over it, the rest, a step over all of it, then audio-stop.

    Returns (events before audio-stop, events after it, number of generate calls before audio-stop).
    """
    half = len(pcm) // 2 // 2 * 2
    async with server.client() as client:
        await client.write_event(Transcribe().event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[:half]).event())
        await _wait_for_step_over(model, half // 2)
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[half:]).event())
        await _wait_for_step_over(model, len(pcm) // 2)
        before = await _drain(client)
        calls_before = len(model.calls)
        await client.write_event(AudioStop().event())
        after = await read_until(client, "transcript-stop", "error")
    return before, after, calls_before


def _texts(events, kind):
    return [event.data["text"] for event in events if event.type == kind]


@pytest.mark.asyncio
async def test_natural_end_commits_text_and_reuses_the_last_step(scripted_asr):  # noqa: F811
    spoken = "hello world, this is a test"
    server, model = await scripted_asr(lambda engine: natural_script(engine, spoken), "--chunk-seconds", "0.5")
    before, after, calls_before = await _stream_in_two_steps(server, model, speechlike(3.0))
    events = before + after
    assert after[-1].type == "transcript-stop", [e.type for e in after]
    (final,) = _texts(events, "transcript")
    assert final == spoken
    assert [e.data["language"] for e in events if e.type in ("transcript-start", "transcript")] == ["en", "en"]
    streamed = _texts(before, "transcript-chunk")
    assert streamed and "".join(streamed) and spoken.startswith("".join(streamed))
    assert "".join(_texts(events, "transcript-chunk")) == final
    assert len(model.calls) == calls_before, "a step over all audio is final: nothing generates after stop"
    last = model.calls[-1]
    assert last.generated < last.max_new_tokens  # ended by the end of turn, not the cap


@pytest.mark.asyncio
async def test_repetition_loop_is_cut_and_never_streamed(scripted_asr):  # noqa: F811
    server, model = await scripted_asr(lambda engine: looping_script(engine, "hello", " the"), "--chunk-seconds", "0.5")
    before, after, _calls = await _stream_in_two_steps(server, model, speechlike(3.0))
    events = before + after
    (final,) = _texts(events, "transcript")
    assert final == detect_and_fix_repetitions("hello" + " the" * 40) == "hello the"
    full = [call for call in model.calls if call.samples >= 3 * 16000]
    raw = server.app.manager.loaded("asr").text(full[-1].ids)
    assert raw.count(" the") >= 20 and parse_asr_output(raw)[1] == final
    head = len(server.app.manager.loaded("asr").tokenizer.encode("language English<asr_text>hello"))
    for call in model.calls:  # every decode stopped once it looped (20 copies), well before the cap
        assert call.prefix + call.generated <= head + 20
        assert call.generated < call.max_new_tokens
    assert "".join(_texts(events, "transcript-chunk")) == final
    assert all("the the" not in piece for piece in _texts(events, "transcript-chunk"))
