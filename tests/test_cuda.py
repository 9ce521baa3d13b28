"""CUDA-only checks: the paths CPU tests never take. Skipped without an NVIDIA GPU; `script/gpu-check`
runs them (and the protocol tests with --device cuda) on a machine that has one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch sees no CUDA device); run script/gpu-check"
)
DEVICE = "cuda:0"


def test_auto_dtype_matches_this_gpu():
    from shared.devices import resolve_dtype

    major, _ = torch.cuda.get_device_capability(DEVICE)
    assert resolve_dtype("auto", DEVICE) == (torch.bfloat16 if major >= 8 else torch.float16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_asr_streaming_step_with_abort_criterion_runs_on_cuda(asr_model_dir, dtype):
    """A streaming step (prefix ids, abort criterion) and a final decode, on the GPU."""
    from wyoming_qwen_asr.engine import AsrEngine

    engine = AsrEngine.load(asr_model_dir, DEVICE, dtype)
    audio = (0.2 * np.random.default_rng(1).standard_normal(3 * 16000)).astype(np.float32)
    prompt = engine.prompt("", "English")
    first = engine.decode(audio, prompt, max_new_tokens=6, should_stop=lambda: False)
    assert len(first) == 6
    more = engine.decode(audio, prompt, prefix_ids=first[:3], max_new_tokens=4, should_stop=lambda: False)
    assert 0 < len(more) <= 4
    assert engine.decode(audio, prompt, max_new_tokens=6, should_stop=lambda: True) == first[:1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tts_frame_streaming_runs_on_cuda(tiny_dir, dtype):
    from wyoming_qwen_tts.engine import FRAME_SAMPLES, TtsEngine, max_frames_for
    from wyoming_qwen_tts.voices import PRESET, Voice

    path = tiny_dir / "tts-custom-voice"
    engine = TtsEngine.load(path, str(path), DEVICE, dtype)
    pieces = []
    frames = engine.stream("Hello there.", Voice("ryan", PRESET, "Ryan"), "english", pieces.append)
    assert frames == max_frames_for("Hello there.")  # random weights run to the cap
    assert sum(len(p) for p in pieces) == frames * FRAME_SAMPLES


def test_encoder_windows_hold_on_flash_attention(asr_model_dir):
    """With flash-attention the official varlen kernel keeps the 8-second windows; the same audio
    through sdpa with our window patch gives the same encoder output (within half precision)."""
    pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    from qwen_asr import Qwen3ASRModel

    from wyoming_qwen_asr.engine import apply_encoder_windows

    outputs = {}
    for attention in ("flash_attention_2", "sdpa"):
        asr = Qwen3ASRModel.from_pretrained(
            str(asr_model_dir), dtype=torch.bfloat16, device_map=DEVICE, attn_implementation=attention
        )
        tower = asr.model.thinker.audio_tower
        assert apply_encoder_windows(tower) == (attention == "sdpa")
        audio = (0.2 * np.random.default_rng(2).standard_normal(20 * 16000)).astype(np.float32)
        features = asr.processor.feature_extractor([audio], sampling_rate=16000, return_tensors="pt")
        feats = features["input_features"][0].to(DEVICE, torch.bfloat16)
        lens = torch.tensor([feats.shape[-1]], device=DEVICE)
        with torch.inference_mode():
            outputs[attention] = tower(feats, feature_lens=lens).last_hidden_state.float()
    assert torch.allclose(outputs["flash_attention_2"], outputs["sdpa"], atol=5e-2, rtol=5e-2)


def _codes(tts, loop, call, frames, seed):
    from wyoming_qwen_tts.frames import generate_frames

    out = []
    torch.manual_seed(seed)
    generate_frames(tts, call, out.append, frames, step_loop=loop)
    return torch.stack(out).cpu()


@pytest.mark.parametrize("kind", ["tts-custom-voice", "tts-base", "tts-voice-design"])
def test_cuda_graphs_replay_the_eager_step_loop(tiny_dir, voices_dir, kind):
    """The engine's default on CUDA: the frame captured as a CUDA graph at load time. Its codes equal the same
    steps run eagerly (same cache length, so the same kernels) for each voice kind, sentence after sentence
    with seeded sampling; a sentence longer than the cache and a greedy one run eagerly; audio streams."""
    from wyoming_qwen_tts.engine import FRAME_SAMPLES, TtsEngine, max_frames_for
    from wyoming_qwen_tts.frame_graphs import CAPACITY
    from wyoming_qwen_tts.step_loop import FrameSteps, StepLoop
    from wyoming_qwen_tts.voices import CLONE, DESIGN, PRESET, Voice

    path = tiny_dir / kind
    engine = TtsEngine.load(path, str(path), DEVICE, torch.bfloat16)
    loop = engine.step_loop
    assert loop is not None and loop.graphs is not None and loop.graphs.runtime.name == "cuda"
    tts = engine.tts
    voice = {
        "tts-custom-voice": Voice("ryan", PRESET, "Ryan"),
        "tts-base": Voice("grandma", CLONE, "", folder=voices_dir / "grandma"),
        "tts-voice-design": Voice("narrator", DESIGN, "", instruct="A deep, calm male narrator."),
    }[kind]
    eager = StepLoop(tts.model.talker, steps=FrameSteps(tts.model.talker, CAPACITY))
    for seed, text in enumerate(("Hello there, graphs.", "A second sentence, a little longer than the first.")):
        call = engine._official_call(text, voice, "english", 30)
        replayed = loop.graphed_sentences
        assert torch.equal(_codes(tts, loop, call, 30, seed), _codes(tts, eager, call, 30, seed)), text
        assert loop.graphed_sentences == replayed + 1
    long_text = "This sentence is long. " * 40
    call = engine._official_call(long_text, voice, "english", CAPACITY)
    assert len(_codes(tts, loop, call, 20, 5)) == 20  # prompt + frames exceed the cache: eager steps
    assert loop.graphed_sentences == 2
    pieces = []
    frames = engine.stream("Hello there.", voice, "english", pieces.append)
    assert 0 < frames <= max_frames_for("Hello there.")  # sampling may draw end-of-speech early
    assert sum(len(p) for p in pieces) == frames * FRAME_SAMPLES
    assert loop.graphed_sentences == 3


def test_no_cuda_graphs_keeps_the_official_loop_on_cuda(tiny_dir):
    from wyoming_qwen_tts.engine import TtsEngine

    path = tiny_dir / "tts-custom-voice"
    assert TtsEngine.load(path, str(path), DEVICE, torch.bfloat16, cuda_graphs=False).step_loop is None
