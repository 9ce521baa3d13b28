"""The static-cache decode loop (`wyoming_qwen_asr.decode_loop`) against the official `generate`.

Every comparison goes through `AsrEngine.decode`, once on the official generate and once on a loop, on
the same loaded model: the same tokens and the same stopping points. The graphed loop runs on the strict
stand-in of `shared.graphs` (`EagerGraphs`), which fails a capture that reads the host and a replay that
runs other work than the capture. Random weights never produce the real EOS ids, so the decodes run to
their cap unless a test says otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from shared.graphs import EagerGraphs
from wyoming_qwen_asr.decode_loop import DecodeLoop, StaticSteps

CAPACITIES = (64, 112)  # the graphed loop's caches: 1-3 s prompts and their outputs fit, 8 s ones do not


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


@pytest.fixture(scope="module")
def engine(asr_model_dir):
    from wyoming_qwen_asr.engine import AsrEngine

    return AsrEngine.load(asr_model_dir, "cpu", torch.float32)


@pytest.fixture(scope="module")
def eager_loop(engine):
    return engine.decode_loop(capacities=None)


@pytest.fixture(scope="module")
def graphed_loop(engine):
    return engine.decode_loop(EagerGraphs(), capacities=CAPACITIES)


def decode_with(engine, loop, *args, **kwargs):
    """`engine.decode` on `loop` (None: the official generate)."""
    engine.loop = loop
    try:
        return engine.decode(*args, **kwargs)
    finally:
        engine.loop = None


def test_load_keeps_the_official_generate_on_a_cpu(engine):
    assert engine.loop is None


@pytest.mark.parametrize(("seconds", "language"), [(1.0, None), (5.0, "English")])
def test_eager_loop_gives_the_official_tokens(engine, eager_loop, seconds, language):
    audio, prompt = noise(seconds, 1), engine.prompt("", language)
    official = decode_with(engine, None, audio, prompt, max_new_tokens=24)
    assert len(official) == 24  # enough tokens that an off-by-one position shows
    assert decode_with(engine, eager_loop, audio, prompt, max_new_tokens=24) == official
    assert eager_loop.timing.tokens == 24 and not eager_loop.timing.graphed
    prefix = official[:7]
    continued = decode_with(engine, None, audio, prompt, prefix, max_new_tokens=20)
    assert decode_with(engine, eager_loop, audio, prompt, prefix, max_new_tokens=20) == continued


def test_graphed_loop_is_captured_once_and_reused_across_prompt_lengths(engine, graphed_loop):
    """Each request takes the smallest resident cache that holds it, and replays its graph."""
    graphs = graphed_loop.graphs
    replays = [graph.replays for graph in graphs]
    requests = [  # seconds, context, language, prefix length, max new tokens
        (1.0, "", None, 0, 20),  # about 48 positions in all
        (2.0, "Kitchen lights", "English", 0, 12),  # about 65
        (1.5, "", None, 4, 10),
        (3.0, "", "German", 0, 6),
    ]
    used = []
    for seed, (seconds, context, language, prefix_length, cap) in enumerate(requests):
        audio, prompt = noise(seconds, seed), engine.prompt(context, language)
        prefix = decode_with(engine, None, audio, prompt, max_new_tokens=prefix_length)[:prefix_length]
        official = decode_with(engine, None, audio, prompt, prefix, max_new_tokens=cap)
        assert decode_with(engine, graphed_loop, audio, prompt, prefix, max_new_tokens=cap) == official
        timing = graphed_loop.timing
        assert timing.graphed and timing.tokens == cap
        used.append(timing.positions)
    assert set(used) == set(CAPACITIES)
    assert graphed_loop.runtime.captures == len(CAPACITIES)
    for graph, before, capacity in zip(graphs, replays, CAPACITIES, strict=True):
        expected = sum(cap - 1 for (*_, cap), positions in zip(requests, used, strict=True) if positions == capacity)
        assert graph.replays - before == expected


def test_a_request_longer_than_the_cache_runs_eagerly_on_its_own(engine, graphed_loop):
    audio, prompt = noise(8.0, 6), engine.prompt("", None)
    official = decode_with(engine, None, audio, prompt, max_new_tokens=20)
    replays = [graph.replays for graph in graphed_loop.graphs]
    assert decode_with(engine, graphed_loop, audio, prompt, max_new_tokens=20) == official
    assert not graphed_loop.timing.graphed and graphed_loop.timing.positions > max(CAPACITIES)
    assert [graph.replays for graph in graphed_loop.graphs] == replays
    # and the resident cache still serves the next short request
    short = decode_with(engine, None, noise(1.0, 7), prompt, max_new_tokens=5)
    assert decode_with(engine, graphed_loop, noise(1.0, 7), prompt, max_new_tokens=5) == short
    assert graphed_loop.timing.graphed


class _CountingStop:
    """should_stop: True from its `k`-th call on (one call per generated token)."""

    def __init__(self, k: int) -> None:
        self.k, self.calls = k, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.k


@pytest.mark.parametrize("k", [1, 4])
def test_abort_stops_at_the_same_token(engine, eager_loop, graphed_loop, k):
    audio, prompt = noise(2.0, 8), engine.prompt("", "English")
    stop = _CountingStop(k)
    official = decode_with(engine, None, audio, prompt, max_new_tokens=8, should_stop=stop)
    assert len(official) == k and stop.calls == k
    for loop in (eager_loop, graphed_loop):
        stop = _CountingStop(k)
        assert decode_with(engine, loop, audio, prompt, max_new_tokens=8, should_stop=stop) == official
        assert stop.calls == k


def test_eos_stops_at_the_same_token(engine):
    """The real EOS ids are out of the tiny vocabulary: make a token the model does produce the EOS."""
    audio, prompt = noise(2.0, 9), engine.prompt("", None)
    tokens = decode_with(engine, None, audio, prompt, max_new_tokens=16)
    eos = tokens[5]
    official_eos = engine.eos_ids
    engine.eos_ids = [eos]
    try:
        official = decode_with(engine, None, audio, prompt, max_new_tokens=16)
    finally:
        engine.eos_ids = official_eos
    assert official == tokens[: tokens.index(eos) + 1]
    loop = DecodeLoop(engine.model.thinker, [eos], capacities=None)
    assert decode_with(engine, loop, audio, prompt, max_new_tokens=16) == official


@pytest.fixture
def looping_model(engine, monkeypatch):
    """The thinker's logits made to choose one token whose text repeats, after any input: the output
    loops from its first token. A device-side table, so the step stays capturable."""
    thinker = engine.model.thinker
    looped = next(i for i in range(300) if len(set(engine.text([i]))) >= 3)
    index = torch.tensor([looped])
    forward = thinker.forward

    def rigged(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = torch.zeros_like(out.logits[:, -1:, :]).index_fill_(-1, index, 1.0)
        return out

    monkeypatch.setattr(thinker, "forward", rigged)
    return looped


def test_the_repetition_guard_stops_at_the_same_token(engine, looping_model):
    audio, prompt = noise(1.0, 10), engine.prompt("", "English")
    official = decode_with(engine, None, audio, prompt, max_new_tokens=40)
    assert official == [looping_model] * len(official) and len(official) < 40
    loops = (engine.decode_loop(capacities=None), engine.decode_loop(EagerGraphs(), capacities=(96,)))
    for loop in loops:
        assert decode_with(engine, loop, audio, prompt, max_new_tokens=40) == official
    # the prefix counts towards the loop: it stops that many tokens earlier
    prefix = [looping_model] * 5
    shorter = decode_with(engine, None, audio, prompt, prefix, max_new_tokens=40)
    assert len(shorter) == len(official) - 5
    for loop in loops:
        assert decode_with(engine, loop, audio, prompt, prefix, max_new_tokens=40) == shorter


class _OpCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def test_a_step_reads_nothing_back_to_the_host(engine):
    """The stand-in's capture fails on any host read; the op count shows the step does the model's work
    (embedding, two layers with attention over the cache, norm, head, argmax)."""
    steps = StaticSteps(engine.model.thinker, 32)
    runtime = EagerGraphs()
    with torch.inference_mode():
        graph = runtime.capture(steps.step)
        graph.replay()
        with _OpCount() as counted:
            steps.step()
    assert counted.ops > 150
    assert int(steps.cache_position) == 5  # two warm-up runs, the capture, a replay, a step


def test_an_off_by_one_position_would_be_caught(engine, monkeypatch):
    """The exactness tests compare 24 tokens: a rope position one off changes them."""
    audio, prompt = noise(3.0, 1), engine.prompt("", "English")
    official = decode_with(engine, None, audio, prompt, max_new_tokens=24)
    prefill = StaticSteps.prefill

    def shifted(self, inputs):
        prefill(self, inputs)
        self.rope_delta.add_(1)

    monkeypatch.setattr(StaticSteps, "prefill", shifted)
    assert decode_with(engine, engine.decode_loop(capacities=None), audio, prompt, max_new_tokens=24) != official


def test_a_sampling_generation_config_keeps_the_official_generate(engine, monkeypatch):
    config = engine.model.thinker.generation_config
    monkeypatch.setattr(config, "repetition_penalty", 1.1)
    assert engine.decode_loop(capacities=None) is None
    monkeypatch.setattr(config, "repetition_penalty", 1.0)
    monkeypatch.setattr(config, "do_sample", True)
    assert engine.decode_loop(capacities=None) is None


def test_int8_model_gives_the_official_tokens(asr_model_dir):
    from wyoming_qwen_asr.engine import AsrEngine

    int8 = AsrEngine.load(asr_model_dir, "cpu", torch.float32, quantize="int8")
    loops = (int8.decode_loop(capacities=None), int8.decode_loop(EagerGraphs(), capacities=CAPACITIES))
    audio, prompt = noise(2.0, 11), int8.prompt("", "English")
    official = decode_with(int8, None, audio, prompt, max_new_tokens=20)
    for loop in loops:
        assert decode_with(int8, loop, audio, prompt, max_new_tokens=20) == official


def test_the_constructor_takes_a_graph_runtime(asr_model_dir):
    from qwen_asr import Qwen3ASRModel

    from wyoming_qwen_asr.engine import AsrEngine

    asr = Qwen3ASRModel.from_pretrained(
        str(asr_model_dir), dtype=torch.float32, device_map="cpu", attn_implementation="sdpa"
    )
    graphed = AsrEngine(asr, graphs=EagerGraphs(), capacities=(64,))
    assert graphed.loop.runtime.captures == 1
    assert len(graphed.decode(noise(1.0, 3), graphed.prompt("", None), max_new_tokens=3)) == 3
    assert graphed.loop.timing.graphed
