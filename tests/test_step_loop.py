"""The step loop behind `--cuda-graphs`, on the CPU: its steps read nothing back to the host (so CUDA graphs can
capture them), steps of a fixed cache length serve sentence after sentence, and the flag is harmless on a
CPU. That its codes equal the official generate's, for every voice kind, is in test_tts_frames.py."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
    """Both steps of a frame and the talker's sampling (repetition penalty, suppressed tokens, minimum length,
    temperature, top-k, top-p) run without one host read, so they can be captured and sampling stays on the GPU."""
    talker = tts.model.talker
    config = talker.config
    steps = FrameSteps(talker, capacity=64)
    steps.predictor_sampler = TokenSampler(config.code_predictor_config.vocab_size, "cpu", True, 50, 0.9, 0.9)
    sampler = TokenSampler(config.vocab_size, "cpu", True, 50, 0.9, 0.9, 1.05, [5, 6, 7], config.codec_eos_token_id, 2)
    hidden = talker.get_input_embeddings().weight.shape[1]
    logits = steps.prefill(
        torch.randn(1, 5, hidden),
        torch.ones(1, 5, dtype=torch.long),
        torch.randn(1, 1, hidden),
        torch.randn(1, 1, hidden),
    )
    steps.position.fill_(5)
    with torch.inference_mode(), HostReads() as reads:
        steps.token.copy_(sampler(logits, new_tokens=0))
        steps.predict_codes()
        steps.step_embeds.copy_(steps.codes_embedding)
        steps.talker_step()
        sampler(steps.logits, new_tokens=1)
    assert reads.seen == []
    assert reads.operators > 200  # it did watch the steps
    with HostReads() as reads:  # the detector itself sees a host read
        int(steps.codes[0, 0])
    assert reads.seen == ["_local_scalar_dense"]


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


def test_cuda_graphs_flag_on_a_cpu_warns_and_keeps_the_official_loop(tiny_dir, caplog):
    from wyoming_qwen_tts.engine import TtsEngine

    path = tiny_dir / "tts-custom-voice"
    with caplog.at_level(logging.WARNING):
        engine = TtsEngine.load(path, str(path), "cpu", torch.float32, cuda_graphs=True)
    assert engine.step_loop is None
    assert "--cuda-graphs needs a CUDA device" in caplog.text


def test_the_options_take_cuda_graphs():
    from wyoming_qwen_tts.options import parse_args

    assert parse_args([]).cuda_graphs is False
    assert parse_args(["--cuda-graphs"]).cuda_graphs is True
