"""Tiny, randomly initialised, seeded Qwen checkpoints built offline from the packages' own config classes.

They are saved with `save_pretrained` and load through the official `from_pretrained` paths exactly as
real checkpoints do, so tests and benchmarks exercise everything but accuracy without the hub.

    python tests/tiny_models.py DIR [--only asr] [--shape tiny|bench|real-0.6b|real-1.7b]
                                    [--device cuda] [--dtype bfloat16]

The real shapes are big (real-1.7b: ~2B parameters per TTS checkpoint, ~8 GB in float32 on the CPU); a GPU
machine builds them in seconds with `--device cuda --dtype bfloat16`. The default (CPU, float32) build of each
shape is deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# librosa (used by the Qwen packages to resample) JIT-compiles with numba; keep its cache out of the venv
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "wyoming-qwen-numba"))

# Qwen2's pre-tokenizer pattern (as in the real tokenizer.json)
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CORPUS = [
    "Hello world. The quick brown fox jumps over the lazy dog.",
    "Turn on the kitchen lights. What is the weather like today?",
    "Guten Morgen, wie geht es dir? Bonjour, comment allez-vous?",
    "你好，世界。今天天气怎么样？",
]

# -- speech-to-text ------------------------------------------------------------------------------

ASR_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>"]
# transcribe() decodes with skip_special_tokens=True and then splits on "<asr_text>", so the tag must
# be an added token that is NOT special
ASR_TEXT_TAG = "<asr_text>"
# Same structure as the real chat template: the system turn is the context string, the user turn
# holds one audio item
ASR_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{{ '<|audio_start|><|audio_pad|><|audio_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# text/encoder sizes: "tiny" for tests, "bench" for benchmarks (the real 0.6B widths, fewer layers), "real-*" the
# published checkpoints' sizes. Optional keys: "mrope" (the text model's M-RoPE sections, published [24, 20, 20];
# default [head_dim/4, head_dim/8, head_dim/8], kept by tiny and bench so their configs stay as they were; the
# three position rows are equal for audio and text prompts in both packages, so the split changes no output).
#
# Sources of the real numbers (no verbatim copy of the ASR config.json files was found; these ports read them):
# - Qwen/Qwen3-ASR-0.6B: CrispStrobe/CrispASR models/convert-qwen3-asr-to-gguf.py (docstring: shapes "verified
#   against actual safetensors shapes"), handy-computer/transcribe.cpp docs/porting/families/qwen3_asr.md
#   (d_model 896, 18 layers, output_dim 1024, LM 1024/3072/28 layers/16 heads/8 kv/head_dim 128, vocab 151936,
#   mrope_section [24, 20, 20], tied word embeddings), ivan-digital/qwen3-asr-swift docs/asr-model.md.
# - Qwen/Qwen3-ASR-1.7B: handy-computer/transcribe.cpp tests/qwen3_asr_real_smoke_1_7b.cpp (asserts the hparams
#   converted from revision 7278e1e: encoder 24 layers, d_model 1024, 16 heads, ffn 4096, downsample 480,
#   output_dim 2048; LM 28 layers, hidden 2048, intermediate 6144, 16 heads, 8 kv heads, head_dim 128,
#   mrope_section [24, 20, 20], tied embeddings, vocab 151936), agreeing with
#   handy-computer/transcribe.cpp docs/models/qwen3-asr-1.7b.md and ivan-digital/qwen3-asr-swift docs/asr-model.md.
# Deliberate difference from the published checkpoints: tie_word_embeddings is False in every shape (see
# build_asr), so the real shapes carry one extra vocab x hidden matrix (lm_head).
ASR_SHAPES = {
    "tiny": dict(
        text_layers=2,
        hidden=64,
        heads=4,
        kv_heads=2,
        head_dim=16,
        intermediate=128,
        enc_layers=2,
        d_model=64,
        enc_heads=4,
        enc_ffn=128,
        downsample=8,
        vocab=512,
    ),
    "bench": dict(
        text_layers=8,
        hidden=1024,
        heads=16,
        kv_heads=8,
        head_dim=128,
        intermediate=3072,
        enc_layers=6,
        d_model=896,
        enc_heads=14,
        enc_ffn=3584,
        downsample=480,
        vocab=4096,
    ),
    "real-0.6b": dict(
        text_layers=28,
        hidden=1024,
        heads=16,
        kv_heads=8,
        head_dim=128,
        intermediate=3072,
        enc_layers=18,
        d_model=896,
        enc_heads=14,
        enc_ffn=3584,
        downsample=480,
        vocab=151936,
        mrope=[24, 20, 20],
    ),
    "real-1.7b": dict(
        text_layers=28,
        hidden=2048,
        heads=16,
        kv_heads=8,
        head_dim=128,
        intermediate=6144,
        enc_layers=24,
        d_model=1024,
        enc_heads=16,
        enc_ffn=4096,
        downsample=480,
        vocab=151936,
        mrope=[24, 20, 20],
    ),
}


def _mrope_section(s):
    return list(s.get("mrope", [s["head_dim"] // 4, s["head_dim"] // 8, s["head_dim"] // 8]))


_DTYPES = ("float32", "bfloat16", "float16")


@contextlib.contextmanager
def _init_on(device=None, dtype=None):
    """Modules built inside get their parameters on `device` (None: the CPU) in `dtype` (None: float32)."""
    import torch

    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            yield
    finally:
        torch.set_default_dtype(previous)


def _byte_level_tokenizer(extra_corpus, special, non_special, extra_special_tokens=None, vocab_size=400):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # role words weigh heavily so each is one token (the TTS wrapper slices ids by position)
    corpus = ["system\n", "user\n", "assistant\n"] * 200 + (list(extra_corpus) + CORPUS) * 20
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=vocab_size, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in non_special])
    hf = Qwen2TokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        errors="replace",
        model_max_length=32768,
        extra_special_tokens=extra_special_tokens or {},
    )
    for word in ("assistant", "user", "system", "\n"):
        assert len(hf.encode(word, add_special_tokens=False)) == 1, word
    return hf


def asr_tokenizer():
    from qwen_asr.inference.utils import SUPPORTED_LANGUAGES

    return _byte_level_tokenizer(
        ["language None"] + [f"language {lang}" for lang in SUPPORTED_LANGUAGES],
        ASR_SPECIAL,
        [ASR_TEXT_TAG],
        # attribute names Qwen3ASRProcessor.__init__ reads from the tokenizer
        extra_special_tokens={
            "audio_token": "<|audio_pad|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
        },
    )


def asr_config(shape: str = "tiny", tokenizer=None):
    """The Qwen3ASRConfig `build_asr` instantiates for `shape` (no weights); `tokenizer` defaults to
    `asr_tokenizer()`."""
    from qwen_asr.core.transformers_backend import Qwen3ASRConfig
    from qwen_asr.inference.utils import SUPPORTED_LANGUAGES

    s = ASR_SHAPES[shape]
    tokenizer = tokenizer if tokenizer is not None else asr_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ASR_SPECIAL}
    assert len(tokenizer) <= s["vocab"]
    return Qwen3ASRConfig(
        thinker_config=dict(
            audio_config=dict(
                num_mel_bins=128,
                encoder_layers=s["enc_layers"],
                encoder_attention_heads=s["enc_heads"],
                encoder_ffn_dim=s["enc_ffn"],
                d_model=s["d_model"],
                output_dim=s["hidden"],
                downsample_hidden_size=s["downsample"],
                max_source_positions=1500,
                # the real values: 1 s convolution chunks, 8 s attention windows
                n_window=50,
                n_window_infer=800,
                conv_chunksize=500,
            ),
            text_config=dict(
                vocab_size=s["vocab"],
                hidden_size=s["hidden"],
                intermediate_size=s["intermediate"],
                num_hidden_layers=s["text_layers"],
                num_attention_heads=s["heads"],
                num_key_value_heads=s["kv_heads"],
                head_dim=s["head_dim"],
                max_position_embeddings=65536,
                rope_theta=1e6,
                # untied: a tied random LM just repeats the last prompt token
                tie_word_embeddings=False,
                rope_scaling={
                    "rope_type": "default",
                    "mrope_section": _mrope_section(s),
                    "interleaved": True,
                    "mrope_interleaved": True,
                },
            ),
            audio_token_id=ids["<|audio_pad|>"],
            audio_start_token_id=ids["<|audio_start|>"],
            audio_end_token_id=ids["<|audio_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        support_languages=list(SUPPORTED_LANGUAGES),
    )


def build_asr(out_dir, *, seed: int = 0, shape: str = "tiny", device=None, dtype=None) -> Path:
    """A Qwen3-ASR checkpoint: tokenizer with every special token, feature extractor, model.

    `device` / `dtype` (e.g. "cuda", "bfloat16") only change where and in which precision the random weights are
    made; the default is the CPU in float32."""
    import torch
    from qwen_asr.core.transformers_backend import Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor
    from transformers import WhisperFeatureExtractor

    torch.manual_seed(seed)
    tokenizer = asr_tokenizer()
    config = asr_config(shape, tokenizer)
    with _init_on(device, dtype):
        model = Qwen3ASRForConditionalGeneration(config).eval()
    # With the default init the convolution front-end's output is ~1e-3, dwarfed by the position
    # embedding: every second of audio encodes alike and the transcript ignores the audio. Fan-in
    # scaling makes the output depend on the audio, as a trained model's does. (Drawn on the CPU whatever
    # `device` is, so these weights do not depend on it.)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.thinker.audio_tower.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator, device="cpu")
                    / module.weight[0].numel() ** 0.5
                )
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator, device="cpu"))
    features = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=16000,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
        padding_value=0.0,
        return_attention_mask=True,
    )
    processor = Qwen3ASRProcessor(feature_extractor=features, tokenizer=tokenizer, chat_template=ASR_CHAT_TEMPLATE)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# -- text-to-speech --------------------------------------------------------------------------------

TTS_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>"]
# the real 12 Hz models' codec-side control ids (talker vocabulary 3072, codebook 2048; ids >= 2048
# are control tokens, all suppressed during generation except EOS)
TTS_CODEC_IDS = dict(
    codec_pad_id=2148,
    codec_bos_id=2149,
    codec_eos_token_id=2150,
    codec_think_id=2154,
    codec_nothink_id=2155,
    codec_think_bos_id=2156,
    codec_think_eos_id=2157,
)
TTS_LANGUAGES = {"chinese": 2055, "english": 2050, "german": 2053, "sichuan_dialect": 2062}
TTS_SPEAKERS = {"ryan": 3061, "vivian": 3065, "eric": 2875}
TTS_DIALECTS = {"ryan": False, "vivian": False, "eric": "sichuan_dialect"}
# what the real checkpoints ship; from_pretrained reads it as the wrapper's generate defaults
TTS_GENERATION = {
    "do_sample": True,
    "top_k": 50,
    "top_p": 1.0,
    "temperature": 0.9,
    "repetition_penalty": 1.05,
    "subtalker_dosample": True,
    "subtalker_top_k": 50,
    "subtalker_top_p": 1.0,
    "subtalker_temperature": 0.9,
    "max_new_tokens": 8192,
}
# Optional keys: "cp_intermediate" (default 2 * cp_hidden), "mrope" (see ASR_SHAPES), "size" (tts_model_size;
# default "1b7" for voice_design, the only VoiceDesign release, else "0b6").
#
# Sources of the real numbers:
# - Qwen3-TTS-12Hz-1.7B-{CustomVoice,Base,VoiceDesign}: verbatim copies of the published config.json files in
#   deepbeepmeep/Wan2GP models/TTS/qwen3/configs/qwen3_tts_{customvoice,base,voicedesign}.json
#   ("transformers_version": "4.57.3"; the three agree on every size): talker hidden 2048, intermediate 6144,
#   28 layers, 16 heads, 8 kv heads, head_dim 128, vocab 3072, text_vocab 151936, text_hidden 2048,
#   mrope_section [24, 20, 20]; code predictor hidden 1024, intermediate 3072, 5 layers, 16 heads, 8 kv heads,
#   head_dim 128, vocab 2048; Base's speaker_encoder_config {"enc_dim": 2048} (= talker hidden), CustomVoice and
#   VoiceDesign have none. So the 1.7B talker (2048) is wider than its code predictor (1024) and
#   talker.code_predictor.small_to_mtp_projection is a Linear(2048, 1024) there (an Identity at 0.6B, where both
#   are 1024). ivan-digital/qwen3-asr-swift docs/tts-model.md lists the 1.7B talker intermediate as 8192: the
#   published configs say 6144.
# - Qwen3-TTS-12Hz-0.6B-CustomVoice: hamptus/mlx-swift-qwen3-tts Tests/Qwen3TTSTests/ConfigTests.swift and
#   ivan-digital/qwen3-asr-swift docs/tts-model.md (talker 1024/3072/28 layers/16 heads/8 kv/head_dim 128,
#   text 2048 x 151936, code predictor 1024/3072/5 layers/16/8/128, mrope_section [24, 20, 20]).
# - The 12 Hz speech tokenizer (Qwen/Qwen3-TTS-Tokenizer-12Hz, shipped in every checkpoint's speech_tokenizer/):
#   CrispStrobe/CrispASR models/convert-qwen3-tts-tokenizer-to-gguf.py ("from public config.json"): decoder
#   hidden 512, 8 layers, 16 heads (head_dim 64), intermediate 1024, codebook_dim 512, latent 1024,
#   decoder_dim 1536, sliding_window 72, 16 quantizers, num_semantic_quantizers 1, semantic_codebook_size 4096,
#   vector_quantization_hidden_dimension 512 (the same decoder_config is inlined verbatim in several other ports'
#   tests; encoder_config has its own vector_quantization_hidden_dimension, 256).
# Not the published sizes in any shape: the speaker encoder's channels (tiny ones; only "base" has one) and the
# speech tokenizer's encoder (tiny; only voice cloning uses it).
TTS_SHAPES = {
    "tiny": dict(
        layers=2,
        hidden=64,
        heads=4,
        kv_heads=2,
        head_dim=16,
        intermediate=128,
        text_vocab=512,
        text_hidden=64,
        cp_hidden=32,
        cp_layers=1,
        cp_heads=2,
        cp_kv_heads=1,
        cp_head_dim=16,
        dec_layers=2,
        dec_hidden=32,
        dec_dim=32,
        dec_latent=32,
        dec_heads=2,
        dec_head_dim=16,
        dec_codebook_dim=16,
    ),
    # the real 0.6B widths with fewer talker and code-predictor layers, and the real 12 Hz decoder
    "bench": dict(
        layers=8,
        hidden=1024,
        heads=16,
        kv_heads=8,
        head_dim=128,
        intermediate=3072,
        text_vocab=512,
        text_hidden=2048,
        cp_hidden=1024,
        cp_layers=2,
        cp_heads=16,
        cp_kv_heads=8,
        cp_head_dim=128,
        cp_intermediate=3072,
        dec_layers=8,
        dec_hidden=512,
        dec_dim=1536,
        dec_latent=1024,
        dec_heads=16,
        dec_head_dim=64,
        dec_codebook_dim=512,
    ),
    # Qwen3-TTS-12Hz-0.6B-CustomVoice's shapes (the text vocabulary only costs memory)
    "real-0.6b": dict(
        layers=28,
        hidden=1024,
        heads=16,
        kv_heads=8,
        head_dim=128,
        intermediate=3072,
        text_vocab=151936,
        text_hidden=2048,
        cp_hidden=1024,
        cp_layers=5,
        cp_heads=16,
        cp_kv_heads=8,
        cp_head_dim=128,
        cp_intermediate=3072,
        dec_layers=8,
        dec_hidden=512,
        dec_dim=1536,
        dec_latent=1024,
        dec_heads=16,
        dec_head_dim=64,
        dec_codebook_dim=512,
        mrope=[24, 20, 20],
    ),
    # Qwen3-TTS-12Hz-1.7B-{CustomVoice,Base,VoiceDesign}'s shapes: a talker twice as wide as its code predictor
    "real-1.7b": dict(
        layers=28,
        hidden=2048,
        heads=16,
        kv_heads=8,
        head_dim=128,
        intermediate=6144,
        text_vocab=151936,
        text_hidden=2048,
        cp_hidden=1024,
        cp_layers=5,
        cp_heads=16,
        cp_kv_heads=8,
        cp_head_dim=128,
        cp_intermediate=3072,
        dec_layers=8,
        dec_hidden=512,
        dec_dim=1536,
        dec_latent=1024,
        dec_heads=16,
        dec_head_dim=64,
        dec_codebook_dim=512,
        mrope=[24, 20, 20],
        size="1b7",
    ),
}
assert sorted(TTS_SHAPES) == sorted(ASR_SHAPES)
TTS_KINDS = {"tts-custom-voice": "custom_voice", "tts-base": "base", "tts-voice-design": "voice_design"}


def tts_tokenizer():
    return _byte_level_tokenizer(["Speak happily.", "A warm, calm voice."], TTS_SPECIAL, [])


def speech_tokenizer_config(shape: str = "tiny"):
    """The 12 Hz speech tokenizer's Qwen3TTSTokenizerV2Config that `build_tts` instantiates for `shape`."""
    from qwen_tts.core import Qwen3TTSTokenizerV2Config

    s = TTS_SHAPES[shape]

    encoder = dict(  # a tiny Mimi encoder: only voice cloning (encode) uses it
        sampling_rate=24000,
        frame_rate=12.5,
        hidden_size=32,
        num_filters=4,
        num_residual_layers=1,
        upsampling_ratios=[8, 6, 5, 4],
        codebook_size=2048,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        num_quantizers=32,
        num_semantic_quantizers=1,
        upsample_groups=32,
        num_hidden_layers=1,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=250,
        use_causal_conv=True,
    )
    decoder = dict(
        codebook_size=2048,
        codebook_dim=s["dec_codebook_dim"],
        hidden_size=s["dec_hidden"],
        latent_dim=s["dec_latent"],
        num_attention_heads=s["dec_heads"],
        num_key_value_heads=s["dec_heads"],
        head_dim=s["dec_head_dim"],
        intermediate_size=2 * s["dec_hidden"],
        num_hidden_layers=s["dec_layers"],
        sliding_window=72,
        num_quantizers=16,
        # in the published decoder_config too; the decoder hard-codes one semantic quantizer and
        # codebook_dim // 2 internally, and Qwen3TTSTokenizerV2DecoderConfig keeps them as plain attributes
        num_semantic_quantizers=1,
        semantic_codebook_size=4096,
        vector_quantization_hidden_dimension=s["dec_codebook_dim"],
        upsample_rates=[8, 5, 4, 3],
        upsampling_ratios=[2, 2],
        decoder_dim=s["dec_dim"],
        max_position_embeddings=8000,
        rope_theta=10000,
        rms_norm_eps=1e-5,
        layer_scale_initial_scale=0.01,
    )
    return Qwen3TTSTokenizerV2Config(
        encoder_config=encoder,
        decoder_config=decoder,
        encoder_valid_num_quantizers=16,
        input_sample_rate=24000,
        output_sample_rate=24000,
        decode_upsample_rate=1920,
        encode_downsample_rate=1920,
    )


def _randomize_decoder(speech_tokenizer, seed):
    """Make the random 12 Hz decoder's audio depend on the codes and be audible.

    Its codebooks start as zeros (every code decodes alike), and the default init shrinks the signal
    through ~20 convolutions to ~1e-9 (silence after int16). Random codebooks and fan-in scaling fix both.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    decoder = speech_tokenizer.decoder
    with torch.no_grad():
        for name, p in decoder.quantizer.named_parameters():
            if name.endswith("embedding_sum"):
                p.copy_(torch.randn(p.shape, generator=generator, device="cpu"))
        for m in decoder.modules():
            if isinstance(m, torch.nn.ConvTranspose1d):
                fan_in = m.weight.shape[0] * m.weight.shape[2] / m.stride[0]
            elif isinstance(m, (torch.nn.Conv1d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
            else:
                continue
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator, device="cpu") / fan_in**0.5)
            if m.bias is not None:
                m.bias.zero_()
        decoder.decoder[-1].conv.weight.mul_(0.002)  # keep the waveform well inside [-1, 1]


def tts_config(kind: str = "custom_voice", shape: str = "tiny", tokenizer=None):
    """The Qwen3TTSConfig `build_tts` instantiates for `kind` and `shape` (no weights); `tokenizer` defaults to
    `tts_tokenizer()`."""
    from qwen_tts.core.models import Qwen3TTSConfig

    s = TTS_SHAPES[shape]
    tokenizer = tokenizer if tokenizer is not None else tts_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in TTS_SPECIAL}
    assert len(tokenizer) <= s["text_vocab"]
    speakers = TTS_SPEAKERS if kind == "custom_voice" else {}
    return Qwen3TTSConfig(
        talker_config=dict(
            vocab_size=3072,
            hidden_size=s["hidden"],
            intermediate_size=s["intermediate"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["kv_heads"],
            head_dim=s["head_dim"],
            max_position_embeddings=32768,
            rope_theta=1e6,
            rope_scaling={
                "rope_type": "default",
                "interleaved": True,
                "mrope_section": _mrope_section(s),
            },
            text_vocab_size=s["text_vocab"],
            text_hidden_size=s["text_hidden"],
            num_code_groups=16,
            position_id_per_seconds=13,
            codec_language_id=TTS_LANGUAGES,
            spk_id=speakers,
            spk_is_dialect={k: v for k, v in TTS_DIALECTS.items() if k in speakers},
            **TTS_CODEC_IDS,
            code_predictor_config=dict(
                vocab_size=2048,
                hidden_size=s["cp_hidden"],
                intermediate_size=s.get("cp_intermediate", 2 * s["cp_hidden"]),
                num_hidden_layers=s["cp_layers"],
                num_attention_heads=s["cp_heads"],
                num_key_value_heads=s["cp_kv_heads"],
                head_dim=s["cp_head_dim"],
                max_position_embeddings=64,
                num_code_groups=16,
                rope_theta=1e6,
            ),
        ),
        speaker_encoder_config=dict(
            mel_dim=128,
            enc_dim=s["hidden"],
            enc_channels=[32, 32, 32, 32, 96],
            enc_kernel_sizes=[5, 3, 3, 3, 1],
            enc_dilations=[1, 2, 3, 4, 1],
            enc_attention_channels=16,
            enc_res2net_scale=4,
            enc_se_channels=16,
            sample_rate=24000,
        ),
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        # VoiceDesign exists only as 1.7B; the 0.6B CustomVoice ignores instructions
        tts_model_size=s.get("size", "1b7" if kind == "voice_design" else "0b6"),
        tts_model_type=kind,
        im_start_token_id=ids["<|im_start|>"],
        im_end_token_id=ids["<|im_end|>"],
        tts_pad_token_id=ids["<tts_pad>"],
        tts_bos_token_id=ids["<tts_text_bos>"],
        tts_eos_token_id=ids["<tts_text_eod>"],
    )


def build_tts(
    out_dir, *, kind: str = "custom_voice", seed: int = 0, shape: str = "tiny", device=None, dtype=None
) -> Path:
    """A Qwen3-TTS 12 Hz checkpoint of `kind` (custom_voice, base, voice_design) with a 12 Hz speech
    tokenizer in `speech_tokenizer/`, where `Qwen3TTSModel.from_pretrained` finds it.

    `device` / `dtype` (e.g. "cuda", "bfloat16") only change where and in which precision the random weights are
    made (the speech tokenizer stays float32, as published); the default is the CPU in float32."""
    import json

    import torch
    from qwen_tts.core import Qwen3TTSTokenizerV2Model
    from qwen_tts.core.models import Qwen3TTSForConditionalGeneration, Qwen3TTSProcessor
    from transformers import EncodecFeatureExtractor

    torch.manual_seed(seed)
    tokenizer = tts_tokenizer()
    config = tts_config(kind, shape, tokenizer)
    with _init_on(device, dtype):
        model = Qwen3TTSForConditionalGeneration(config).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    Qwen3TTSProcessor(tokenizer=tokenizer).save_pretrained(out)
    # Qwen3TTSSpeakerEncoderConfig takes no **kwargs, but to_dict() writes "model_type" into it:
    # drop it or the checkpoint does not load again
    config_path = out / "config.json"
    saved = json.loads(config_path.read_text())
    saved["speaker_encoder_config"].pop("model_type", None)
    config_path.write_text(json.dumps(saved, indent=2))
    (out / "generation_config.json").write_text(json.dumps(TTS_GENERATION, indent=2))

    del model
    with _init_on(device):
        speech_tokenizer = Qwen3TTSTokenizerV2Model(speech_tokenizer_config(shape)).eval()
    _randomize_decoder(speech_tokenizer, seed)
    speech_tokenizer.save_pretrained(out / "speech_tokenizer")
    EncodecFeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0).save_pretrained(
        out / "speech_tokenizer"
    )
    return out


def _tts_builder(kind):
    def build(out_dir, seed=0, shape="tiny", device=None, dtype=None):
        return build_tts(out_dir, kind=kind, seed=seed, shape=shape, device=device, dtype=dtype)

    return build


BUILDERS = {"asr": build_asr, **{name: _tts_builder(kind) for name, kind in TTS_KINDS.items()}}


def prebuilt_or_build(out_dir: Path, prebuilt: Optional[str] = None) -> Path:
    """`prebuilt` (or WYOMING_QWEN_TINY_DIR) when it holds every tiny checkpoint, else build them in `out_dir`."""
    for candidate in (prebuilt, os.environ.get("WYOMING_QWEN_TINY_DIR")):
        if candidate and all((Path(candidate) / name / "config.json").exists() for name in BUILDERS):
            return Path(candidate)
    for name, build in BUILDERS.items():
        build(Path(out_dir) / name)
    return Path(out_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="Directory that receives one sub-directory per checkpoint")
    parser.add_argument("--only", action="append", choices=sorted(BUILDERS), help="Build only these")
    parser.add_argument(
        "--shape", default="tiny", choices=sorted(ASR_SHAPES), help="tiny (tests), bench, real-0.6b, real-1.7b"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="make the random weights there, e.g. cuda (default: the CPU)")
    parser.add_argument("--dtype", default=None, choices=_DTYPES, help="of the weights (default: float32)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in args.only or BUILDERS:
        started = time.monotonic()
        path = BUILDERS[name](
            Path(args.dir) / name, seed=args.seed, shape=args.shape, device=args.device, dtype=args.dtype
        )
        print(f"{name}: {path} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
