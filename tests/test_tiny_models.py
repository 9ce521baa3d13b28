"""The random checkpoints' configurations against the published ones, without building any weights.

Configs come from the same functions `tiny_models.build_asr` / `build_tts` use; modules are only instantiated on
the `meta` device, so nothing is allocated.
"""

from __future__ import annotations

import pytest

import tiny_models

# The published numbers (sources in the comments above tiny_models.ASR_SHAPES / TTS_SHAPES)
ASR_AUDIO_PUBLISHED = {
    "real-0.6b": dict(
        encoder_layers=18, d_model=896, encoder_attention_heads=14, encoder_ffn_dim=3584, output_dim=1024
    ),
    "real-1.7b": dict(
        encoder_layers=24, d_model=1024, encoder_attention_heads=16, encoder_ffn_dim=4096, output_dim=2048
    ),
}
ASR_TEXT_PUBLISHED = {
    "real-0.6b": dict(hidden_size=1024, intermediate_size=3072),
    "real-1.7b": dict(hidden_size=2048, intermediate_size=6144),
}
# the same in both sizes
ASR_TEXT_COMMON = dict(
    num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936
)
TTS_TALKER_PUBLISHED = {
    "real-0.6b": dict(hidden_size=1024, intermediate_size=3072, text_hidden_size=2048),
    "real-1.7b": dict(hidden_size=2048, intermediate_size=6144, text_hidden_size=2048),
}
# the same in both sizes
TTS_TALKER_COMMON = dict(
    num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=3072
)
TTS_PREDICTOR_PUBLISHED = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=5,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=2048,
    num_code_groups=16,
)
REAL = sorted(ASR_AUDIO_PUBLISHED)


@pytest.fixture(scope="module")
def asr_tokenizer():
    return tiny_models.asr_tokenizer()


@pytest.fixture(scope="module")
def tts_tokenizer():
    return tiny_models.tts_tokenizer()


def code_predictor_on_meta(config):
    """talker.code_predictor for a Qwen3TTSConfig, with no memory behind its parameters."""
    import torch
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSTalkerCodePredictorModelForConditionalGeneration

    talker = config.talker_config
    with torch.device("meta"):
        return Qwen3TTSTalkerCodePredictorModelForConditionalGeneration(talker.code_predictor_config, talker)


def test_every_shape_exists_for_both_models_and_on_the_command_line():
    assert sorted(tiny_models.ASR_SHAPES) == sorted(tiny_models.TTS_SHAPES)
    assert {"tiny", "bench", "real-0.6b", "real-1.7b"} <= set(tiny_models.ASR_SHAPES)
    args = tiny_models.build_parser().parse_args(
        ["out", "--shape", "real-1.7b", "--only", "asr", "--device", "cuda", "--dtype", "bfloat16"]
    )
    assert (args.shape, args.device, args.dtype, args.only) == ("real-1.7b", "cuda", "bfloat16", ["asr"])
    defaults = tiny_models.build_parser().parse_args(["out"])
    assert (defaults.shape, defaults.device, defaults.dtype, defaults.seed) == ("tiny", None, None, 0)


@pytest.mark.parametrize("shape", REAL)
def test_asr_config_has_the_published_sizes(shape, asr_tokenizer):
    thinker = tiny_models.asr_config(shape, asr_tokenizer).thinker_config
    audio, text = thinker.audio_config, thinker.text_config
    for key, value in ASR_AUDIO_PUBLISHED[shape].items():
        assert getattr(audio, key) == value, key
    for key, value in {**ASR_TEXT_PUBLISHED[shape], **ASR_TEXT_COMMON}.items():
        assert getattr(text, key) == value, key
    assert audio.downsample_hidden_size == 480
    assert (audio.n_window, audio.n_window_infer) == (50, 800)
    assert text.rope_scaling["mrope_section"] == [24, 20, 20]
    # the audio tower's projection lands in the text model's width
    assert audio.output_dim == text.hidden_size


@pytest.mark.parametrize("kind", ["custom_voice", "base", "voice_design"])
@pytest.mark.parametrize("shape", REAL)
def test_tts_config_has_the_published_sizes(shape, kind, tts_tokenizer):
    config = tiny_models.tts_config(kind, shape, tts_tokenizer)
    talker = config.talker_config
    for key, value in {**TTS_TALKER_PUBLISHED[shape], **TTS_TALKER_COMMON, "text_vocab_size": 151936}.items():
        assert getattr(talker, key) == value, key
    for key, value in TTS_PREDICTOR_PUBLISHED.items():
        assert getattr(talker.code_predictor_config, key) == value, key
    assert talker.rope_scaling["mrope_section"] == [24, 20, 20]
    assert config.tts_model_type == kind
    assert config.tts_model_size == ("1b7" if shape == "real-1.7b" or kind == "voice_design" else "0b6")
    # the speaker embedding is added to the talker's inputs: as wide as the talker (published 1.7B Base: 2048)
    assert config.speaker_encoder_config.enc_dim == talker.hidden_size


def test_1_7b_talker_is_wider_than_its_code_predictor(tts_tokenizer):
    import torch

    talker = tiny_models.tts_config("custom_voice", "real-1.7b", tts_tokenizer).talker_config
    assert (talker.hidden_size, talker.code_predictor_config.hidden_size) == (2048, 1024)
    predictor = code_predictor_on_meta(tiny_models.tts_config("custom_voice", "real-1.7b", tts_tokenizer))
    projection = predictor.small_to_mtp_projection
    assert isinstance(projection, torch.nn.Linear)
    assert (projection.in_features, projection.out_features) == (2048, 1024)
    assert projection.bias is not None
    assert projection.weight.is_meta
    # the predictor's codec embeddings stay talker-wide; the projection narrows them
    assert predictor.model.codec_embedding[0].weight.shape == (2048, 2048)


def test_0_6b_talker_and_code_predictor_are_as_wide(tts_tokenizer):
    import torch

    config = tiny_models.tts_config("custom_voice", "real-0.6b", tts_tokenizer)
    assert config.talker_config.hidden_size == config.talker_config.code_predictor_config.hidden_size == 1024
    assert isinstance(code_predictor_on_meta(config).small_to_mtp_projection, torch.nn.Identity)


def test_tiny_talker_is_wider_than_its_code_predictor_so_cpu_tests_run_the_projection(tts_tokenizer):
    import torch

    config = tiny_models.tts_config("custom_voice", "tiny", tts_tokenizer)
    talker = config.talker_config
    assert talker.hidden_size > talker.code_predictor_config.hidden_size
    projection = code_predictor_on_meta(config).small_to_mtp_projection
    assert isinstance(projection, torch.nn.Linear)
    assert (projection.in_features, projection.out_features) == (64, 32)


@pytest.mark.parametrize("shape", sorted(tiny_models.TTS_SHAPES))
def test_speech_tokenizer_config_carries_the_published_decoder_keys(shape):
    from qwen_tts.core import Qwen3TTSTokenizerV2Config

    config = tiny_models.speech_tokenizer_config(shape)
    decoder = config.decoder_config
    assert decoder.num_semantic_quantizers == 1
    assert decoder.semantic_codebook_size == 4096
    assert decoder.vector_quantization_hidden_dimension == decoder.codebook_dim
    # they are written to config.json and read back
    again = Qwen3TTSTokenizerV2Config(**config.to_dict()).decoder_config
    assert again.num_semantic_quantizers == 1
    assert again.vector_quantization_hidden_dimension == decoder.codebook_dim
    if shape.startswith("real-"):
        assert (decoder.hidden_size, decoder.num_hidden_layers, decoder.num_attention_heads) == (512, 8, 16)
        assert (decoder.codebook_dim, decoder.latent_dim, decoder.decoder_dim) == (512, 1024, 1536)
        assert (decoder.intermediate_size, decoder.head_dim, decoder.num_quantizers) == (1024, 64, 16)
        assert decoder.vector_quantization_hidden_dimension == 512


def test_init_on_meta_in_bfloat16_allocates_nothing_and_restores_the_default_dtype():
    import torch

    before = torch.get_default_dtype()
    with tiny_models._init_on("meta", "bfloat16"):
        layer = torch.nn.Linear(4096, 4096)
    assert layer.weight.is_meta and layer.weight.dtype == torch.bfloat16
    assert torch.get_default_dtype() == before
    with tiny_models._init_on():
        layer = torch.nn.Linear(2, 2)
    assert layer.weight.device.type == "cpu" and layer.weight.dtype == before
