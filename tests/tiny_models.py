"""Tiny, randomly initialised, seeded Qwen checkpoints built offline from the packages' own config classes.

They are saved with `save_pretrained` and load through the official `from_pretrained` paths exactly as
real checkpoints do, so tests and benchmarks exercise everything but accuracy without the hub.

    python tests/tiny_models.py DIR [--only asr] [--shape tiny|bench]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

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

# text/encoder sizes: "tiny" for tests, "bench" for benchmarks (the real 0.6B widths, fewer layers)
ASR_SHAPES = {
    "tiny": dict(text_layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128,
                 enc_layers=2, d_model=64, enc_heads=4, enc_ffn=128, downsample=8, vocab=512),
    "bench": dict(text_layers=8, hidden=1024, heads=16, kv_heads=8, head_dim=128, intermediate=3072,
                  enc_layers=6, d_model=896, enc_heads=14, enc_ffn=3584, downsample=480, vocab=4096),
    "real-0.6b": dict(text_layers=28, hidden=1024, heads=16, kv_heads=8, head_dim=128, intermediate=3072,
                      enc_layers=18, d_model=896, enc_heads=14, enc_ffn=3584, downsample=480, vocab=151936),
}


def _byte_level_tokenizer(extra_corpus, special, non_special, extra_special_tokens=None, vocab_size=400):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # role words weigh heavily so each is one token (the TTS wrapper slices ids by position)
    corpus = ["system\n", "user\n", "assistant\n"] * 200 + (list(extra_corpus) + CORPUS) * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in non_special])
    hf = Qwen2TokenizerFast(
        tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, errors="replace", model_max_length=32768,
        extra_special_tokens=extra_special_tokens or {},
    )
    for word in ("assistant", "user", "system", "\n"):
        assert len(hf.encode(word, add_special_tokens=False)) == 1, word
    return hf


def build_asr(out_dir, *, seed: int = 0, shape: str = "tiny") -> Path:
    """A Qwen3-ASR checkpoint: tokenizer with every special token, feature extractor, model."""
    import torch
    from qwen_asr.core.transformers_backend import (
        Qwen3ASRConfig, Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor)
    from qwen_asr.inference.utils import SUPPORTED_LANGUAGES
    from transformers import WhisperFeatureExtractor

    s = ASR_SHAPES[shape]
    torch.manual_seed(seed)
    tokenizer = _byte_level_tokenizer(
        ["language None"] + [f"language {lang}" for lang in SUPPORTED_LANGUAGES],
        ASR_SPECIAL, [ASR_TEXT_TAG],
        # attribute names Qwen3ASRProcessor.__init__ reads from the tokenizer
        extra_special_tokens={"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                              "audio_eos_token": "<|audio_end|>"},
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ASR_SPECIAL}
    assert len(tokenizer) <= s["vocab"]
    config = Qwen3ASRConfig(
        thinker_config=dict(
            audio_config=dict(
                num_mel_bins=128, encoder_layers=s["enc_layers"], encoder_attention_heads=s["enc_heads"],
                encoder_ffn_dim=s["enc_ffn"], d_model=s["d_model"], output_dim=s["hidden"],
                downsample_hidden_size=s["downsample"], max_source_positions=1500,
                # the real values: 1 s convolution chunks, 8 s attention windows
                n_window=50, n_window_infer=800, conv_chunksize=500,
            ),
            text_config=dict(
                vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                num_hidden_layers=s["text_layers"], num_attention_heads=s["heads"],
                num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"], max_position_embeddings=65536,
                rope_theta=1e6,
                # untied: a tied random LM just repeats the last prompt token
                tie_word_embeddings=False,
                rope_scaling={"rope_type": "default",
                              "mrope_section": [s["head_dim"] // 4, s["head_dim"] // 8, s["head_dim"] // 8],
                              "interleaved": True, "mrope_interleaved": True},
            ),
            audio_token_id=ids["<|audio_pad|>"],
            audio_start_token_id=ids["<|audio_start|>"],
            audio_end_token_id=ids["<|audio_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        support_languages=list(SUPPORTED_LANGUAGES),
    )
    model = Qwen3ASRForConditionalGeneration(config).eval()
    # With the default init the convolution front-end's output is ~1e-3, dwarfed by the position
    # embedding: every second of audio encodes alike and the transcript ignores the audio. Fan-in
    # scaling makes the output depend on the audio, as a trained model's does.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.thinker.audio_tower.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                    / module.weight[0].numel() ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    features = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400,
        padding_value=0.0, return_attention_mask=True)
    processor = Qwen3ASRProcessor(feature_extractor=features, tokenizer=tokenizer,
                                  chat_template=ASR_CHAT_TEMPLATE)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


BUILDERS = {"asr": build_asr}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="Directory that receives one sub-directory per checkpoint")
    parser.add_argument("--only", action="append", choices=sorted(BUILDERS), help="Build only these")
    parser.add_argument("--shape", default="tiny", help="tiny (tests), bench, real-0.6b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in args.only or BUILDERS:
        started = time.monotonic()
        path = BUILDERS[name](Path(args.dir) / name, seed=args.seed, shape=args.shape)
        print(f"{name}: {path} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
