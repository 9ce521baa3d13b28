"""The step loop and its frame graph, on the CPU: a frame reads nothing back to the host (so it can be captured),
steps of a fixed cache length serve sentence after sentence, the graph (on the strict CPU stand-in of
shared/graphs.py) replays exactly what the eager steps compute, and the options. That the codes equal the
official generate's, for every voice kind, is in test_tts_frames.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from shared.graphs import EagerGraphs, GraphCaptureError
from wyoming_qwen_tts.frame_graphs import CAPACITY, FrameGraphs, checkpoint_samplers, graphed_step_loop
from wyoming_qwen_tts.frames import generate_frames
from wyoming_qwen_tts.step_loop import FrameSteps, StepLoop, TokenSampler

from official import official_codes

# operators that read a tensor's value on the host (a device sync) or give a shape that depends on values
HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique_consecutive", "_unique2", "item"}


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []
        self.operators = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        self.operators += 1
        if name in HOST_READS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def tts(tiny_dir):
    from qwen_tts import Qwen3TTSModel

    return Qwen3TTSModel.from_pretrained(str(tiny_dir / "tts-custom-voice"), dtype=torch.float32, device_map="cpu")


def preset_call(tts, text, max_frames):
    return lambda: tts.generate_custom_voice(
        text=text, speaker="ryan", language="english", max_new_tokens=max_frames + 1
    )


def stepped_codes(tts, loop, text, seed, max_frames):
    frames = []
    torch.manual_seed(seed)
    generate_frames(tts, preset_call(tts, text, max_frames), frames.append, max_frames, step_loop=loop)
    return torch.stack(frames)


TALKER_SETTINGS = {  # what Qwen3-TTS passes to talker.generate (a top-p below 1 added to cover it)
    "sampled": dict(do_sample=True, top_k=50, top_p=0.8, temperature=0.9, repetition_penalty=1.05, min_new_tokens=2),
    "greedy": dict(do_sample=False, repetition_penalty=1.05, min_new_tokens=2),
}


@pytest.mark.parametrize("setting", sorted(TALKER_SETTINGS))
def test_the_sampler_is_hugging_faces_processors_and_draw(tts, setting):
    """Against the processor list HF's generate builds for the same arguments, on logits large enough that a
    missing or reordered processor shows: the same scores, bit for bit, and the same token for the same seed."""
    talker = tts.model.talker
    config = talker.config
    eos = config.codec_eos_token_id
    suppress = [i for i in range(config.vocab_size - 1024, config.vocab_size) if i != eos]  # as Qwen3-TTS passes
    kwargs = dict(TALKER_SETTINGS[setting], eos_token_id=eos, suppress_tokens=suppress)
    generation_config = copy.deepcopy(talker.generation_config)
    generation_config.update(**kwargs)
    talker._prepare_special_tokens(generation_config, device="cpu")  # as generate does before building the list
    processors = talker._get_logits_processor(generation_config=generation_config, input_ids_seq_length=0, device="cpu")
    ours = TokenSampler(
        config.vocab_size, "cpu", kwargs["do_sample"], kwargs.get("top_k"), kwargs.get("top_p"),
        kwargs.get("temperature"), kwargs["repetition_penalty"], suppress, eos, kwargs["min_new_tokens"],
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    history = torch.zeros(1, 0, dtype=torch.long)
    for step in range(12):
        logits = 4 * torch.randn(1, config.vocab_size, generator=generator)
        logits[0, history[0]] += 3  # repeated tokens are likely again, as with trained weights
        logits[0, eos] = logits.max() + 1  # end-of-speech would win unless suppressed
        expected = processors(history, logits.clone())
        assert torch.equal(ours.scores(logits, new_tokens=step), expected), step
        torch.manual_seed(step)
        if kwargs["do_sample"]:
            reference = torch.multinomial(torch.nn.functional.softmax(expected, dim=-1), num_samples=1)
        else:
            reference = torch.argmax(expected, dim=-1, keepdim=True)
        torch.manual_seed(step)
        token = ours(logits, new_tokens=step)
        assert torch.equal(token, reference), step
        history = torch.cat([history, token], dim=1)
    assert eos in history[0, 2:] and eos not in history[0, :2]  # the minimum length held end-of-speech back


def test_a_frame_reads_nothing_back_to_the_host(tts):
    """A whole frame (the code predictor's 15 steps with their sampling, the talker step, and the talker's
    sampling: repetition penalty, suppressed tokens, minimum length, temperature, top-k, top-p) runs without one
    host read, so it can be captured and sampling stays on the GPU."""
    talker = tts.model.talker
    config = talker.config
    steps = FrameSteps(talker, capacity=64)
    sampler = TokenSampler(config.vocab_size, "cpu", True, 50, 0.9, 0.9, 1.05, [5, 6, 7], config.codec_eos_token_id, 2)
    steps.start(sampler, TokenSampler(config.code_predictor_config.vocab_size, "cpu", True, 50, 0.9, 0.9))
    hidden = talker.get_input_embeddings().weight.shape[1]
    steps.prefill(
        torch.randn(1, 5, hidden),
        torch.ones(1, 5, dtype=torch.long),
        torch.randn(1, 1, hidden),
        torch.randn(1, 1, hidden),
    )
    with torch.inference_mode(), HostReads() as reads:
        steps.frame()
    assert reads.seen == []
    assert reads.operators > 200  # it did watch the steps
    with HostReads() as reads:  # the detector itself sees a host read
        int(steps.out[0])
    assert reads.seen in (["_local_scalar_dense"], ["item"])
    assert int(steps.position) == 6 and int(steps.new_tokens) == 2  # the frame moved the positions on


def test_fixed_length_steps_serve_one_sentence_after_another(tts):
    """What CUDA graphs use: one talker cache kept across sentences (reset in place), and a sentence longer than
    it runs on a cache of its own; the codes are the official ones every time."""
    steps = FrameSteps(tts.model.talker, capacity=96)
    loop = StepLoop(tts.model.talker, steps=steps)
    sentences = (("Hello world.", 30), ("A second, longer sentence follows here.", 24))
    long_sentence = ("This one needs more positions than the fixed cache has. " * 2, 90)
    for seed, (text, frames) in enumerate((*sentences, long_sentence)):
        expected = official_codes(tts, preset_call(tts, text, frames), seed)
        assert torch.equal(stepped_codes(tts, loop, text, seed, frames), expected)
    assert steps.talker_cache.max_cache_len == 96


def test_the_graph_replays_exactly_the_eager_steps_sentence_after_sentence(tts):
    """The frame captured once (on the stand-in, which re-runs it and refuses any replay that would differ from
    the capture on a GPU) gives the eager steps' codes for each sentence in turn, with the same cache length;
    a sentence longer than the cache, and one with other sampling settings, run the same steps eagerly."""
    graphed = graphed_step_loop(tts, runtime=EagerGraphs(), capacity=96)
    eager = StepLoop(tts.model.talker, steps=FrameSteps(tts.model.talker, 96))
    sentences = (("Hello world.", 30), ("A second, longer sentence follows here.", 24), ("Short.", 12))
    for seed, (text, frames) in enumerate(sentences):
        codes = stepped_codes(tts, graphed, text, seed, frames)
        assert torch.equal(codes, stepped_codes(tts, eager, text, seed, frames)), text
        assert torch.equal(codes, official_codes(tts, preset_call(tts, text, frames), seed)), text
    assert graphed.graphed_sentences == len(sentences)
    assert graphed.graphs._graphs[0].replays == sum(frames for _, frames in sentences)
    long_text = "This one needs more positions than the fixed cache has. " * 2
    assert torch.equal(
        stepped_codes(tts, graphed, long_text, 7, 90), official_codes(tts, preset_call(tts, long_text, 90), 7)
    )
    assert graphed.graphed_sentences == len(sentences)  # ran eagerly
    greedy = lambda: tts.generate_custom_voice(  # noqa: E731
        text="Hello.", speaker="ryan", language="english", max_new_tokens=13, do_sample=False
    )
    frames = []
    torch.manual_seed(0)  # the code predictor still samples
    generate_frames(tts, greedy, frames.append, 12, step_loop=graphed)
    assert torch.equal(torch.stack(frames), official_codes(tts, greedy, 0))
    assert graphed.graphed_sentences == len(sentences)  # other settings: eagerly too


@pytest.mark.parametrize("layout", ["0.6b", "1.7b"])
def test_the_graph_serves_both_model_sizes(tts, tmp_path, monkeypatch, layout):
    """The 0.6B models' code predictor is as wide as their talker (no projection between them); the 1.7B's is
    narrower (a Linear from the talker's width, as in the tiny checkpoints). The graph gives the official codes
    for both layouts."""
    from qwen_tts import Qwen3TTSModel

    import tiny_models

    if layout == "0.6b":
        shape = dict(tiny_models.TTS_SHAPES["tiny"], cp_hidden=64, cp_heads=4, cp_kv_heads=2)
        monkeypatch.setitem(tiny_models.TTS_SHAPES, "tiny-0.6b-layout", shape)
        path = tiny_models.build_tts(tmp_path / "tts", shape="tiny-0.6b-layout")
        tts = Qwen3TTSModel.from_pretrained(str(path), dtype=torch.float32, device_map="cpu")
    projection = tts.model.talker.code_predictor.small_to_mtp_projection
    assert isinstance(projection, torch.nn.Identity if layout == "0.6b" else torch.nn.Linear)
    loop = graphed_step_loop(tts, runtime=EagerGraphs(), capacity=96)
    text = "Hello world, both sizes."
    expected = official_codes(tts, preset_call(tts, text, 20), 1)
    assert torch.equal(stepped_codes(tts, loop, text, 1, 20), expected)
    assert loop.graphed_sentences == 1


def test_two_graphs_per_frame_replay_the_same_codes(tts):
    one = graphed_step_loop(tts, runtime=EagerGraphs(), capacity=64)
    two = graphed_step_loop(tts, runtime=EagerGraphs(), granularity="steps", capacity=64)
    assert len(two.graphs._graphs) == 2
    assert torch.equal(stepped_codes(tts, one, "Hello there.", 3, 20), stepped_codes(tts, two, "Hello there.", 3, 20))
    with pytest.raises(ValueError, match="granularity"):
        FrameGraphs(one.graphs.steps, one.graphs.sampler, one.graphs.predictor_sampler, EagerGraphs(), "layer")


def test_the_capture_leaves_nothing_behind(tts):
    """The warm-up runs and the capture write into the caches, positions and the repetition penalty's memory:
    all of it is reset, so the first sentence starts clean."""
    loop = graphed_step_loop(tts, runtime=EagerGraphs(), capacity=64)
    steps = loop.graphs.steps
    for layer in steps.talker_cache.layers + steps.predictor_cache.layers:
        assert not layer.keys.any() and not layer.values.any()
    assert int(steps.position) == 0 and int(steps.new_tokens) == 0 and not steps.out.any()
    assert not loop.graphs.sampler.seen.any()


def test_the_stand_in_catches_a_reset_outside_inference_mode(tts, monkeypatch):
    """The bug of the first GPU run: the caches, made in inference mode, were reset outside it after the
    capture. The stand-in runs that capture on the CPU, so the same mistake fails here."""

    def reset_outside_inference_mode(self):
        self.talker_cache.reset()

    monkeypatch.setattr(FrameSteps, "reset", reset_outside_inference_mode)
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        graphed_step_loop(tts, runtime=EagerGraphs(), capacity=64)


def test_a_frame_that_reads_the_host_cannot_be_captured(tts, monkeypatch):
    original = FrameSteps.talker_step

    def with_a_host_read(self):
        original(self)
        if int(self.token) < 0:  # what the official loop's per-step checks would do
            pass

    monkeypatch.setattr(FrameSteps, "talker_step", with_a_host_read)
    with pytest.raises(GraphCaptureError, match="reads a tensor's value on the host"):
        graphed_step_loop(tts, runtime=EagerGraphs(), capacity=64)


def test_the_checkpoint_samplers_are_what_the_wrapper_passes(tts):
    sampler, predictor_sampler = checkpoint_samplers(tts, "cpu")
    config = tts.model.talker.config
    eos = config.codec_eos_token_id
    assert sampler.settings() == (True, 0.9, 50, None, 1.05, 2, eos, tuple(i for i in range(2048, 3072) if i != eos))
    assert predictor_sampler.settings()[:5] == (True, 0.9, 50, None, None)
    assert CAPACITY >= 2048


def test_an_engine_streams_through_the_graph(tts):
    from wyoming_qwen_tts.engine import FRAME_SAMPLES, TtsEngine, max_frames_for
    from wyoming_qwen_tts.voices import PRESET, Voice

    loop = graphed_step_loop(tts, runtime=EagerGraphs(), capacity=256)
    engine = TtsEngine(tts, "tiny", step_loop=loop)
    pieces = []
    frames = engine.stream("Hello there.", Voice("ryan", PRESET, "Ryan"), "english", pieces.append)
    assert frames == max_frames_for("Hello there.")  # random weights run to the cap
    assert sum(len(p) for p in pieces) == frames * FRAME_SAMPLES
    assert loop.graphed_sentences == 1


def test_a_graphed_engine_warms_every_decoder_length_a_sentence_uses(tts, monkeypatch):
    """With graphs (a GPU) the warm-up also decodes each chunk length of the schedule, from a cold and from a
    primed context (a cloned voice): each new length costs a GPU a one-time plan of about 0.1 s."""
    from wyoming_qwen_tts.engine import TtsEngine, chunk_schedule
    from wyoming_qwen_tts.incremental_decoder import IncrementalDecoder

    pushed = []
    original = IncrementalDecoder.push

    def push(self, codes, pad_to=0):
        pushed.append(len(codes))
        return original(self, codes, pad_to)

    monkeypatch.setattr(IncrementalDecoder, "push", push)
    engine = TtsEngine(tts, "tiny", step_loop=graphed_step_loop(tts, runtime=EagerGraphs(), capacity=64))
    assert engine.default_first_chunk_frames == 1
    engine.warm_up()
    schedule = chunk_schedule(1)
    assert pushed[2:] == [*schedule, schedule[-1]] * 2  # after the two generated frames, one push each
    assert TtsEngine(tts, "tiny").default_first_chunk_frames == 1  # the official loop on a CPU too


def test_the_options_turn_cuda_graphs_off(monkeypatch):
    from wyoming_qwen_asr.options import parse_args as asr_args
    from wyoming_qwen_tts.options import parse_args as tts_args

    assert tts_args([]).cuda_graphs is True
    assert tts_args(["--no-cuda-graphs"]).cuda_graphs is False
    assert tts_args(["--cuda-graphs"]).cuda_graphs is True  # the flag of earlier releases still parses
    assert asr_args([]).cuda_graphs is True and asr_args(["--no-cuda-graphs"]).cuda_graphs is False
    monkeypatch.setenv("QWEN_TTS_NO_CUDA_GRAPHS", "true")
    assert tts_args([]).cuda_graphs is False
