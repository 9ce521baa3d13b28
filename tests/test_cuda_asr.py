"""CUDA-only checks of the ASR decode loop with its step captured as a CUDA graph (`decode_loop`).
Skipped without an NVIDIA GPU; the CPU tests (tests/test_asr_decode_loop.py) run the same loop on the
eager stand-in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch sees no CUDA device); run script/gpu-check"
)
DEVICE = "cuda:0"


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def decode_with(engine, loop, *args, **kwargs):
    """`engine.decode` on `loop` (None: the official generate)."""
    kept = engine.loop
    engine.loop = loop
    try:
        return engine.decode(*args, **kwargs)
    finally:
        engine.loop = kept


@pytest.fixture(scope="module")
def engine_bf16(asr_model_dir):
    from wyoming_qwen_asr.engine import AsrEngine

    return AsrEngine.load(asr_model_dir, DEVICE, torch.bfloat16)


@pytest.fixture(scope="module")
def engine_fp32(asr_model_dir):
    from wyoming_qwen_asr.engine import AsrEngine

    return AsrEngine.load(asr_model_dir, DEVICE, torch.float32)


def test_load_captures_a_cuda_graph(engine_bf16):
    loop = engine_bf16.loop
    assert loop is not None and loop.graphs and loop.runtime.name == "cuda"


def test_graphed_loop_equals_the_eager_static_loop_in_bfloat16(engine_bf16):
    """Same kernels on caches of the same sizes: the same tokens, request after request."""
    from wyoming_qwen_asr.decode_loop import CAPACITIES

    eager = engine_bf16.decode_loop(capacities=CAPACITIES)
    for seed, (seconds, language) in enumerate([(1.0, None), (3.0, "English"), (8.0, None)]):
        audio, prompt = noise(seconds, seed), engine_bf16.prompt("", language)
        graphed = engine_bf16.decode(audio, prompt, max_new_tokens=24)
        assert engine_bf16.loop.timing.graphed
        assert decode_with(engine_bf16, eager, audio, prompt, max_new_tokens=24) == graphed
        prefix = graphed[:5]
        continued = engine_bf16.decode(audio, prompt, prefix, max_new_tokens=12)
        assert decode_with(engine_bf16, eager, audio, prompt, prefix, max_new_tokens=12) == continued


def test_graphed_loop_equals_the_official_generate_in_float32(engine_fp32):
    for seed, (seconds, language) in enumerate([(2.0, "English"), (5.0, None)]):
        audio, prompt = noise(seconds, 10 + seed), engine_fp32.prompt("", language)
        official = decode_with(engine_fp32, None, audio, prompt, max_new_tokens=24)
        assert engine_fp32.decode(audio, prompt, max_new_tokens=24) == official
        assert engine_fp32.loop.timing.graphed


def test_a_request_longer_than_the_cache_runs_eagerly(engine_fp32):
    from shared.graphs import runtime_for

    small = engine_fp32.decode_loop(runtime_for(DEVICE), capacities=(64,))
    audio, prompt = noise(3.0, 20), engine_fp32.prompt("", None)
    official = decode_with(engine_fp32, None, audio, prompt, max_new_tokens=20)
    assert decode_with(engine_fp32, small, audio, prompt, max_new_tokens=20) == official
    assert not small.timing.graphed


def without_trailing_special(engine, tokens):
    """What `decode` returns for raw output `tokens`: trailing special ids dropped."""
    special = set(engine.tokenizer.all_special_ids) | set(engine.eos_ids)
    tokens = list(tokens)
    while tokens and tokens[-1] in special:
        tokens.pop()
    return tokens


def test_abort_criterion_on_the_graphed_loop(engine_bf16):
    """should_stop True from its 3rd call on (one call per token): the first three tokens of a decode
    that was not stopped."""
    audio, prompt = noise(3.0, 1), engine_bf16.prompt("", "English")
    full = engine_bf16.decode(audio, prompt, max_new_tokens=6, should_stop=lambda: False)
    calls = []

    def stop_at_third() -> bool:
        calls.append(1)
        return len(calls) >= 3

    stopped = engine_bf16.decode(audio, prompt, max_new_tokens=6, should_stop=stop_at_third)
    assert len(calls) == 3 and engine_bf16.loop.timing.tokens == 3
    assert stopped == without_trailing_special(engine_bf16, full[:3])
    first = engine_bf16.decode(audio, prompt, max_new_tokens=6, should_stop=lambda: True)
    assert first == without_trailing_special(engine_bf16, full[:1])
