"""The lean decoder (wyoming_qwen_tts/lean_decoder.py) against the official forward, on the CPU: the same
logits, hidden states and codes, bit for bit, frame after frame, for both model layouts, in float32 and
int8; with far fewer operators (what makes it faster); and the official forward wherever it is not
supported. That the CPU engine's codes are the official `generate`'s is in test_tts_frames.py."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wyoming_qwen_tts.frame_graphs import checkpoint_samplers
from wyoming_qwen_tts.step_loop import FrameSteps, StepLoop, cpu_step_loop

FRAMES = 12


class OperatorCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module", params=["0.6b", "1.7b"])
def layout_dir(request, tmp_path_factory, tiny_dir):
    """The 1.7B layout (a code predictor narrower than the talker, a Linear between them) is the tiny
    checkpoints'; the 0.6B layout has both as wide, and no projection."""
    import tiny_models

    if request.param == "1.7b":
        return tiny_dir / "tts-custom-voice"
    shape = dict(tiny_models.TTS_SHAPES["tiny"], cp_hidden=64, cp_heads=4, cp_kv_heads=2)
    tiny_models.TTS_SHAPES["tiny-0.6b-layout"] = shape
    try:
        return tiny_models.build_tts(tmp_path_factory.mktemp("lean") / "tts", shape="tiny-0.6b-layout")
    finally:
        del tiny_models.TTS_SHAPES["tiny-0.6b-layout"]


@pytest.fixture(scope="module", params=["float32", "int8"])
def talker(request, layout_dir):
    from qwen_tts import Qwen3TTSModel

    from shared.quantize import quantize_int8

    tts = Qwen3TTSModel.from_pretrained(str(layout_dir), dtype=torch.float32, device_map="cpu")
    talker = tts.model.talker
    if request.param == "int8":
        assert quantize_int8([talker.model, talker.code_predictor.model], "tiny") > 0
    return tts, talker


def run_frames(tts, talker, lean: bool, seed: int = 5):
    """Each frame's codes, talker logits, talker hidden state and code embedding sum, from a fixed prompt."""
    steps = FrameSteps(talker, 64, lean=lean)
    assert steps.lean is lean
    steps.start(*checkpoint_samplers(tts, "cpu"))
    hidden = steps.past_hidden.shape[-1]
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randn(1, 10, hidden, generator=generator)
    text = torch.randn(1, FRAMES, hidden, generator=generator)
    torch.manual_seed(seed)
    seen = []
    with torch.inference_mode():
        steps.prefill(prompt, torch.ones(1, 10, dtype=torch.long), text, text[:, :1])
        for index in range(FRAMES):
            steps.text.copy_(text[:, index : index + 1])
            steps.frame()
            seen.append([t.clone() for t in (steps.out, steps.logits, steps.past_hidden, steps.codes_embedding)])
    return seen


def test_the_lean_frames_are_the_official_forwards_bit_for_bit(talker):
    tts, talker = talker
    official, lean = run_frames(tts, talker, False), run_frames(tts, talker, True)
    for index, (expected, got) in enumerate(zip(official, lean, strict=True)):
        for name, a, b in zip(
            ("codes", "talker logits", "talker hidden", "code embeddings"), expected, got, strict=True
        ):
            assert torch.equal(a, b), f"frame {index}: {name} differ"


def test_a_lean_frame_runs_fewer_operators(talker):
    """What makes it faster on a CPU, counted rather than timed (the time is `script/bench tts-cpu-parts`'s):
    a frame is 16 one-token forwards whose products are a small part of their operators. At the tiny shapes
    (2 talker layers, 1 predictor layer, so the samplers' share is large) lean runs 0.76-0.79 of the
    official forward's operators."""
    tts, talker = talker
    counts = {}
    for lean in (False, True):
        steps = FrameSteps(talker, 64, lean=lean)
        steps.start(*checkpoint_samplers(tts, "cpu"))
        hidden = steps.past_hidden.shape[-1]
        with torch.inference_mode():
            steps.prefill(
                torch.randn(1, 10, hidden),
                torch.ones(1, 10, dtype=torch.long),
                torch.zeros(1, 1, hidden),
                torch.zeros(1, 1, hidden),
            )
            steps.frame()
            with OperatorCount() as counter:
                steps.frame()
        counts[lean] = counter.count
    assert counts[True] < 0.85 * counts[False], counts


def test_where_it_is_not_supported_the_official_forward_runs(talker, monkeypatch):
    tts, talker = talker
    monkeypatch.setattr(talker.model.config, "sliding_window", 8)
    assert FrameSteps(talker, 64, lean=True).lean is False
    assert cpu_step_loop(talker) is None
    monkeypatch.undo()
    monkeypatch.setattr(talker.code_predictor.model.config, "_attn_implementation", "flash_attention_2")
    assert FrameSteps(talker, 64, lean=True).lean is False


def test_on_a_cpu_the_engine_streams_through_the_lean_step_loop(tiny_dir):
    from wyoming_qwen_tts.engine import TtsEngine

    path = tiny_dir / "tts-custom-voice"
    loop = TtsEngine.load(path, str(path), "cpu", torch.float32).step_loop
    assert isinstance(loop, StepLoop) and loop.lean and loop.graphs is None
