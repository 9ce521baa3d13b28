"""`--quantize int8`: what is quantized, what is not, and how far the logits move (the accuracy guard).

Accuracy needs trained weights, which cannot be had here. The guard is the relative error of the logits,
int8 against float32, teacher-forced over 300 steps of each quantized decoder: the same functions that
`script/bench quantize` prints at the real 0.6B shapes.

Why a 2% bound on these tiny checkpoints: rounding to int8 moves each weight by at most half a step
(1/254 of its row's largest magnitude) and each activation likewise per token, and the errors of
independent elements add in quadrature. A correct quantization measures 0.05-0.7% here. (At the real
0.6B shapes, with 28 random layers compounding, it is 1.7-4.9%.) The defects this has to catch move
logits by several times that: a scale on the wrong axis, a transposed or stale weight, an output head
or embedding quantized by mistake, clipped activations. `test_the_guard_catches_a_wrong_scale` shows
one at more than 5x the bound.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from shared import quantize
from shared.quantize import Int8Linear, pack_for_cpu, quantize_int8, resolve_quantize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import quantize as bench_quantize
import quantize_kernels

BOUND = 0.02


def int8_layers(module: nn.Module) -> int:
    return sum(isinstance(m, Int8Linear) for m in module.modules())


@pytest.fixture(scope="module")
def asr_engines(asr_model_dir):
    from wyoming_qwen_asr.engine import AsrEngine

    return {mode: AsrEngine.load(asr_model_dir, "cpu", torch.float32, quantize=mode) for mode in ("none", "int8")}


@pytest.fixture(scope="module")
def tts_engines(tiny_dir):
    from wyoming_qwen_tts.engine import TtsEngine

    path = tiny_dir / "tts-custom-voice"
    return {mode: TtsEngine.load(path, str(path), "cpu", torch.float32, quantize=mode) for mode in ("none", "int8")}


def test_auto_means_int8_on_a_cpu_and_none_on_cuda():
    assert resolve_quantize("auto", "cpu") == "int8"
    assert resolve_quantize("auto", "cuda:0") == "none"
    assert resolve_quantize("none", "cpu") == "none" and resolve_quantize("int8", "cuda:0") == "int8"


def test_only_the_asr_language_model_and_its_head_are_quantized(asr_engines):
    float_model, int8_model = asr_engines["none"].model.thinker, asr_engines["int8"].model.thinker
    assert int8_layers(float_model) == 0
    linears = sum(type(m) is nn.Linear for m in float_model.model.modules())
    assert int8_layers(int8_model.model) == linears > 0
    assert int8_layers(int8_model.audio_tower) == 0 and type(int8_model.lm_head) is Int8Linear
    assert type(int8_model.model.embed_tokens) is nn.Embedding


def test_only_the_talker_and_code_predictor_are_quantized(tts_engines):
    talker = tts_engines["int8"].tts.model.talker
    assert int8_layers(talker.model) > 0 and int8_layers(talker.code_predictor.model) > 0
    assert type(talker.codec_head) is nn.Linear and int8_layers(talker.text_projection) == 0
    assert all(type(head) is nn.Linear for head in talker.code_predictor.lm_head)
    assert int8_layers(tts_engines["int8"].tts.model.speech_tokenizer.model) == 0


def test_asr_logit_error_stays_under_the_bound(asr_engines):
    error = bench_quantize.asr_logit_error(asr_engines["none"], asr_engines["int8"])
    print(f"ASR language model logit error: {error:.4f}")
    assert 0 < error < BOUND


def test_tts_logit_error_stays_under_the_bound(tts_engines):
    errors = bench_quantize.tts_logit_error(tts_engines["none"].tts, tts_engines["int8"].tts)
    print(f"TTS logit errors: {errors}")
    assert all(0 < error < BOUND for error in errors.values()), errors


def test_an_int8_layer_is_close_to_its_float_layer_for_any_row_count():
    torch.manual_seed(0)
    linear = nn.Linear(256, 384)
    layer = Int8Linear(linear)
    for rows in (1, 3, 40):
        x = torch.randn(2, rows, 256)
        with torch.inference_mode():
            reference, ours = linear(x), layer(x)
        assert ours.shape == reference.shape
        assert float((ours - reference).norm() / reference.norm()) < 0.02


def test_the_guard_catches_a_wrong_scale(asr_model_dir, asr_engines, monkeypatch):
    from wyoming_qwen_asr.engine import AsrEngine

    # the `_int_mm` kernel, whose scales stay outside the product (fbgemm's packed weights hold their own)
    monkeypatch.setenv("WYOMING_QWEN_INT8_KERNEL", "int_mm")
    quantize._fbgemm_reduce_range.cache_clear()
    try:
        broken = AsrEngine.load(asr_model_dir, "cpu", torch.float32, quantize="int8")
    finally:
        monkeypatch.undo()
        quantize._fbgemm_reduce_range.cache_clear()
    for layer in broken.model.thinker.model.modules():
        if isinstance(layer, Int8Linear):
            layer.weight_scale.copy_(layer.weight_scale.flip(0))  # each channel gets another channel's scale
    assert bench_quantize.asr_logit_error(asr_engines["none"], broken) > 5 * BOUND


def test_quantize_int8_replaces_only_plain_linear_layers():
    model = nn.Sequential(nn.Linear(8, 8), nn.Embedding(4, 8), nn.Sequential(nn.Linear(8, 2)))
    assert quantize_int8([model], "a test model") == 2
    assert isinstance(model[0], Int8Linear) and isinstance(model[2][0], Int8Linear)
    assert type(model[1]) is nn.Embedding


def quantized_separately(decoder: nn.Module) -> nn.Module:
    """Every nn.Linear replaced by its own Int8Linear, no siblings fused: the reference for the fusion."""
    separate = quantize_kernels.replaced(decoder, Int8Linear)
    pack_for_cpu([separate])
    return separate


@pytest.fixture(params=["fbgemm", "int_mm"])
def kernel(request, monkeypatch):
    """Each CPU kernel in turn (`WYOMING_QWEN_INT8_KERNEL`); fbgemm's is the default where it works."""
    monkeypatch.setenv("WYOMING_QWEN_INT8_KERNEL", "auto" if request.param == "fbgemm" else "int_mm")
    quantize._fbgemm_reduce_range.cache_clear()
    yield request.param
    quantize._fbgemm_reduce_range.cache_clear()


def test_fused_siblings_give_bitwise_the_outputs_of_separate_layers_with_fewer_products(
    asr_engines, monkeypatch, kernel
):
    decoder = asr_engines["none"].model.thinker.model
    separate, fused = quantized_separately(decoder), copy.deepcopy(decoder)
    quantize_int8([fused], "a copy of the ASR language model")
    layers = len(decoder.layers)
    int8_layers_of_fused = [layer for layer in fused.modules() if isinstance(layer, Int8Linear)]
    assert sum(layer.siblings is not None for layer in int8_layers_of_fused) == 5 * layers
    packed = [layer.packed if layer.siblings is None else layer.siblings.packed for layer in int8_layers_of_fused]
    assert all(p is not None for p in packed) if kernel == "fbgemm" else all(p is None for p in packed)

    products = []
    product = quantize.int8_product
    monkeypatch.setattr(quantize, "int8_product", lambda rows, *a: products.append(rows.shape[0]) or product(rows, *a))
    ids = torch.randint(0, decoder.embed_tokens.num_embeddings, (1, 12), generator=torch.Generator().manual_seed(0))
    outputs = []
    with torch.inference_mode():
        for model in (separate, fused):
            products.clear()
            prefill = model(input_ids=ids[:, :8], use_cache=True)
            cache, steps = prefill.past_key_values, [prefill.last_hidden_state]
            for position in range(8, 12):  # decode steps, one row each
                step = model(input_ids=ids[:, position : position + 1], past_key_values=cache, use_cache=True)
                cache = step.past_key_values
                steps.append(step.last_hidden_state)
            outputs.append(torch.cat(steps, dim=1))
            calls = len(products)
            assert calls == (7 if model is separate else 4) * layers * 5  # q/k/v and gate/up: one product each
    assert torch.equal(outputs[0], outputs[1])


def test_fbgemm_packed_layers_match_the_int_mm_kernel_and_free_the_plain_weights():
    """The packed kernel computes what `_int_mm` computes (per-row scaling, 8-bit activations on this
    CPU), for one row and many, with an outlier row; the plain int8 copy is released once packed."""
    torch.manual_seed(0)
    linear = nn.Linear(512, 768)
    plain, packed = Int8Linear(linear), Int8Linear(linear)
    assert pack_for_cpu([packed]) == 1
    assert packed.packed is not None and packed.weight_int8.numel() == 0
    assert "fbgemm" in repr(packed) and "fbgemm" not in repr(plain)
    for rows in (1, 3, 40):
        x = torch.randn(rows, 512)
        x[0] *= 50  # one row far louder than the others: per-tensor quantization would lose the rest
        with torch.inference_mode():
            reference, ours, theirs = linear(x), plain(x), packed(x)
        assert float((theirs - reference).norm() / reference.norm()) < 0.01
        quiet = slice(1, None)
        if rows > 1:  # the quiet rows keep their own precision
            error = (theirs[quiet] - reference[quiet]).norm() / reference[quiet].norm()
            assert float(error) < 1.5 * float((ours[quiet] - reference[quiet]).norm() / reference[quiet].norm())


def test_the_kernel_choice_follows_the_probe_and_the_override(monkeypatch):
    clear = quantize._fbgemm_reduce_range.cache_clear
    try:
        clear()
        assert quantize._probe_fbgemm(True)
        assert quantize._fbgemm_reduce_range() is (not quantize._probe_fbgemm(False))
        clear()
        monkeypatch.setattr(quantize, "_probe_fbgemm", lambda reduce_range: reduce_range)  # saturates at 8 bits
        assert quantize._fbgemm_reduce_range() is True
        clear()
        monkeypatch.setattr(quantize, "_probe_fbgemm", lambda reduce_range: False)  # wrong either way
        assert quantize._fbgemm_reduce_range() is None
        clear()

        def dropped(reduce_range):
            raise RuntimeError("Could not run 'quantized::linear_prepack'")  # a PyTorch without the operators

        monkeypatch.setattr(quantize, "_probe_fbgemm", dropped)
        assert quantize._fbgemm_reduce_range() is None
        assert pack_for_cpu([Int8Linear(nn.Linear(8, 8))]) == 0
        clear()
        monkeypatch.undo()
        monkeypatch.setenv("WYOMING_QWEN_INT8_KERNEL", "int_mm")
        assert quantize._fbgemm_reduce_range() is None
    finally:
        clear()


def test_a_sibling_called_on_another_input_computes_its_own_product():
    torch.manual_seed(0)
    parent = nn.Module()
    parent.gate_proj, parent.up_proj = nn.Linear(32, 48, bias=False), nn.Linear(32, 48, bias=True)
    reference = {name: Int8Linear(getattr(parent, name)) for name in ("gate_proj", "up_proj")}
    pack_for_cpu(reference.values())  # the kernel quantize_int8 picks
    quantize_int8([parent], "two siblings")
    assert parent.gate_proj.siblings is parent.up_proj.siblings is not None
    x, y = torch.randn(3, 32), torch.randn(3, 32)
    with torch.inference_mode():
        assert torch.equal(parent.gate_proj(x), reference["gate_proj"](x))
        assert torch.equal(parent.up_proj(y), reference["up_proj"](y))  # not the cached product of x
        assert torch.equal(parent.up_proj(x), reference["up_proj"](x))  # the second sibling called first
        assert torch.equal(parent.gate_proj(x), reference["gate_proj"](x))


def load_from_the_cache_only(model_dir, monkeypatch):
    """The int8 ASR engine of `model_dir`, failing if any layer is quantized instead of read from the cache."""
    from wyoming_qwen_asr.engine import AsrEngine

    original_init = Int8Linear.__init__

    def no_quantizing(self, linear, stored=None):
        assert stored is not None, "quantized again although the cache fits"
        original_init(self, linear, stored)

    monkeypatch.setattr(Int8Linear, "__init__", no_quantizing)
    try:
        return AsrEngine.load(model_dir, "cpu", torch.float32, quantize="int8")
    finally:
        monkeypatch.setattr(Int8Linear, "__init__", original_init)


def test_int8_weights_are_cached_and_read_back_without_quantizing_again(tiny_dir, tmp_path, monkeypatch):
    """The first load writes the int8 weights beside the model (safetensors); the next one reads them and
    computes nothing (quantizing would raise here), with bitwise the same logits. A changed checkpoint or a
    damaged file gets a fresh quantization, and the old file is replaced."""
    import shutil

    from shared import quantize
    from wyoming_qwen_asr.engine import AsrEngine

    model_dir = tmp_path / "asr"
    shutil.copytree(tiny_dir / "asr", model_dir)
    first = AsrEngine.load(model_dir, "cpu", torch.float32, quantize="int8")
    (cached,) = tmp_path.glob("asr.int8-*.safetensors")
    assert cached == quantize.cache_file(model_dir)

    second = load_from_the_cache_only(model_dir, monkeypatch)
    assert bench_quantize.asr_logit_error(first, second) == 0.0

    cached.write_bytes(b"not safetensors")
    third = AsrEngine.load(model_dir, "cpu", torch.float32, quantize="int8")
    assert bench_quantize.asr_logit_error(first, third) == 0.0
    (weights,) = model_dir.glob("*.safetensors")
    os.utime(weights, ns=(1, 1))  # the checkpoint changed
    AsrEngine.load(model_dir, "cpu", torch.float32, quantize="int8")
    (replaced,) = tmp_path.glob("asr.int8-*.safetensors")
    assert replaced != cached


def test_a_downloaded_model_caches_in_its_hub_repository_folder(tmp_path):
    from shared.quantize import cache_file

    snapshot = tmp_path / "models--Qwen--Qwen3-ASR-0.6B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x")
    path = cache_file(snapshot)
    assert path.parent == tmp_path / "models--Qwen--Qwen3-ASR-0.6B" and path.name.startswith("int8-abc123-")


def test_a_read_only_model_folder_caches_in_the_hub_cache_and_says_so(tiny_dir, tmp_path, monkeypatch, caplog):
    """A model mounted read-only (Docker's `-v ...:/models:ro`) used to be quantized again at every load,
    silently: its cache now goes to the Hugging Face cache (the data volume), is read back by the next
    load, and the log says where; with nowhere to write, a warning says what that costs."""
    import logging
    import shutil

    from shared import quantize
    from wyoming_qwen_asr.engine import AsrEngine

    model_dir = tmp_path / "models" / "asr"
    shutil.copytree(tiny_dir / "asr", model_dir)
    hub = tmp_path / "data" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    read_only = {model_dir.parent}  # root writes through chmod: the check itself says read-only
    monkeypatch.setattr(quantize, "_writable", lambda folder: Path(folder) not in read_only)
    caplog.set_level(logging.INFO, logger="shared.quantize")

    first = AsrEngine.load(model_dir, "cpu", torch.float32, quantize="int8")
    (cached,) = (hub / "wyoming-qwen-int8").glob("asr.int8-*.safetensors")
    assert cached == quantize.cache_file(model_dir)
    assert not list(model_dir.parent.glob("*.safetensors"))
    assert f"the int8 cache of {model_dir} goes to {hub / 'wyoming-qwen-int8'}" in caplog.text

    second = load_from_the_cache_only(model_dir, monkeypatch)
    assert bench_quantize.asr_logit_error(first, second) == 0.0

    other = tmp_path / "elsewhere" / "asr"  # another model folder of the same name gets its own file
    shutil.copytree(tiny_dir / "asr", other)
    read_only.add(other.parent)
    assert quantize.cache_file(other).parent == cached.parent and quantize.cache_file(other) != cached

    read_only.add(hub / "wyoming-qwen-int8")
    caplog.clear()
    assert quantize.cache_file(model_dir) is None
    assert "quantized again at every load" in caplog.text


@pytest.mark.skipif(quantize._fbgemm_reduce_range() is None, reason="needs fbgemm (x86); ARM has nothing to pack")
def test_a_model_serves_while_its_kernels_are_packed_in_the_background():
    """quantize_int8(pack=False) serves at once through `_int_mm`; KernelPacking's steps then pack a few
    matrices each, recording where the packed buffers lie (for standby), and the model ends up computing
    exactly what packing at load computes."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(40)])  # 1 MiB a matrix in int8
    at_load, later = copy.deepcopy(model), copy.deepcopy(model)
    quantize_int8([at_load], "packed at load")
    quantize_int8([later], "packed later", pack=False)
    x = torch.randn(1, 1024)
    with torch.inference_mode():
        reference, by_int_mm = at_load(x), later(x)
    assert not torch.equal(by_int_mm, reference) and float((by_int_mm - reference).norm() / reference.norm()) < 0.05
    ranges = []
    packing = quantize.KernelPacking([later], ranges)
    assert packing.count == 40 and not packing.done
    steps = 1
    while packing.step():
        steps += 1
    assert 1 < steps < 40 and packing.done  # a few matrices a step: 32 Mi weights (quantize.STEP_ELEMENTS)
    assert all(layer.packed is not None and layer.weight_int8.numel() == 0 for layer in later)
    assert sum(end - start for start, end in ranges) >= 40 << 20
    with torch.inference_mode():
        assert torch.equal(later(x), reference)
