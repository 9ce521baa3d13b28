"""Both engines in standby, in this process: the same output after it, nothing captured again on the CUDA
seam's stand-in, and an int8 model's weights moved to file pages (shared/standby.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared import file_pages
from shared.graphs import EagerGraphs
from wyoming_qwen_tts.voices import PRESET, Voice


@pytest.fixture
def small_pages(monkeypatch):
    """The tiny checkpoints' matrices are a few KiB: move everything of a page or more."""
    monkeypatch.setattr(file_pages, "MIN_BYTES", file_pages.PAGE)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def moved_mib(summary: str) -> float:
    return float(summary.split(" MiB moved")[0])


def test_int8_asr_standby_moves_its_weights_and_decodes_the_same(small_pages, tmp_path):
    from wyoming_qwen_asr.engine import AsrEngine

    import tiny_models

    # a bfloat16 checkpoint, as published: the float32 weights it loads as are converted copies, anonymous
    # memory that standby moves
    checkpoint = tiny_models.build_asr(tmp_path / "asr-bf16", dtype="bfloat16")
    engine = AsrEngine.load(checkpoint, "cpu", torch.float32, quantize="int8")
    while engine.prepare_step():  # the worker packs in the background after a load
        pass
    prompt = engine.prompt("", None)
    before = engine.decode(noise(2.0), prompt, max_new_tokens=12)
    summary = engine.standby()
    assert moved_mib(summary) > 0 and "0 MiB of them released" not in summary, summary
    assert engine.decode(noise(2.0), prompt, max_new_tokens=12) == before
    assert moved_mib(engine.standby()) == 0  # the second time there is nothing left to move
    assert engine.decode(noise(2.0), prompt, max_new_tokens=12) == before


def test_int8_tts_standby_moves_its_weights_and_speaks_the_same(small_pages, greedy_tiny_dir):
    from wyoming_qwen_tts.engine import TtsEngine

    path = greedy_tiny_dir / "tts-custom-voice"
    # bfloat16 from a float32 checkpoint: the weights are converted copies, anonymous memory to move (as a
    # published bfloat16 checkpoint loaded in float32 gives)
    engine = TtsEngine.load(path, str(path), "cpu", torch.bfloat16, quantize="int8")
    while engine.prepare_step():
        pass

    def speak() -> np.ndarray:
        chunks = []
        engine.stream("Hello there.", Voice("ryan", PRESET, ""), "english", chunks.append)
        return np.concatenate(chunks)

    before = speak()
    summary = engine.standby()
    assert moved_mib(summary) > 0, summary
    assert np.array_equal(speak(), before)


class CountingGraphs(EagerGraphs):
    """The CUDA seam's stand-in, counting captures: standby must leave none to redo."""

    def __init__(self) -> None:
        super().__init__()
        self.capture_calls = 0

    def capture(self, *args, **kwargs):
        self.capture_calls += 1
        return super().capture(*args, **kwargs)


def test_asr_on_the_cuda_seam_captures_nothing_after_standby(asr_model_dir):
    from qwen_asr import Qwen3ASRModel

    from wyoming_qwen_asr.engine import AsrEngine

    asr = Qwen3ASRModel.from_pretrained(str(asr_model_dir), dtype=torch.float32, device_map="cpu")
    runtime = CountingGraphs()
    engine = AsrEngine(asr, graphs=runtime, capacities=(64,))
    prompt = engine.prompt("", None)
    before = engine.decode(noise(1.0, 3), prompt, max_new_tokens=6)
    captured, replays = runtime.capture_calls, engine.loop.timing.graphed
    assert captured >= 1 and replays
    engine.standby()
    assert engine.decode(noise(1.0, 3), prompt, max_new_tokens=6) == before
    assert runtime.capture_calls == captured and engine.loop.timing.graphed


def test_tts_on_the_cuda_seam_captures_nothing_after_standby(tiny_dir):
    from qwen_tts import Qwen3TTSModel

    from wyoming_qwen_tts.engine import TtsEngine
    from wyoming_qwen_tts.frame_graphs import graphed_step_loop

    path = tiny_dir / "tts-custom-voice"
    tts = Qwen3TTSModel.from_pretrained(str(path), dtype=torch.float32, device_map="cpu")
    runtime = CountingGraphs()
    engine = TtsEngine(tts, str(path), graphed_step_loop(tts, runtime=runtime, capacity=96))

    def speak(seed: int) -> np.ndarray:
        chunks = []
        torch.manual_seed(seed)
        engine.stream("Hello there.", Voice("ryan", PRESET, ""), "english", chunks.append)
        return np.concatenate(chunks)

    before = speak(1)
    captured, sentences = runtime.capture_calls, engine.step_loop.graphed_sentences
    assert captured >= 1 and sentences == 1
    engine.standby()
    assert np.array_equal(speak(1), before)
    assert runtime.capture_calls == captured and engine.step_loop.graphed_sentences == 2
