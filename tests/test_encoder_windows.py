"""The audio encoder attends within its 8-second windows on the CPU (sdpa) path too.

qwen-asr 0.0.6 never applies the windows outside flash-attention (upstream Qwen3-ASR issue #213); the
engine applies them. The first complete window's output must not change when audio is appended.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wyoming_qwen_asr.engine import apply_encoder_windows

from official import official_transcribe

WINDOW_TOKENS = 104  # 8 s of mel frames (800) after the convolution front-end


@pytest.fixture(scope="module")
def encoder_and_mel(asr_model_dir):
    from qwen_asr import Qwen3ASRModel

    asr = Qwen3ASRModel.from_pretrained(str(asr_model_dir), dtype=torch.float32, device_map="cpu")
    rng = np.random.default_rng(1)
    n = 16 * 16000
    envelope = 0.05 + 0.5 * np.abs(np.sin(np.arange(n) / 16000 * 1.3))
    audio = (envelope * rng.standard_normal(n)).astype(np.float32)
    features = asr.processor.feature_extractor(
        audio, sampling_rate=16000, return_attention_mask=True, return_tensors="pt"
    )
    return asr.model.thinker.audio_tower, features["input_features"][0]


@torch.no_grad()
def first_window(tower, mel, frames):
    out = tower(mel[:, :frames], feature_lens=torch.tensor([frames])).last_hidden_state
    return out[:WINDOW_TOKENS]


def test_unpatched_encoder_changes_earlier_output(encoder_and_mel):
    tower, mel = encoder_and_mel
    assert tower.config._attn_implementation in ("sdpa", "eager")
    # the upstream defect this guards against: appended audio leaks into the first window
    difference = (first_window(tower, mel, 800) - first_window(tower, mel, 1600)).abs().max()
    assert difference > 1e-3


def test_windowed_encoder_keeps_finished_window_stable(encoder_and_mel):
    tower, mel = encoder_and_mel
    assert apply_encoder_windows(tower)
    eight = first_window(tower, mel, 800)
    for longer in (1200, 1600):
        assert torch.allclose(eight, first_window(tower, mel, longer), atol=1e-5)


def test_encoder_cache_equals_the_encoder_and_reuses_unchanged_audio(asr_model_dir):
    """The caching forward gives the windowed encoder's output while reusing unchanged chunks."""
    from qwen_asr import Qwen3ASRModel

    from wyoming_qwen_asr.encoder_cache import EncoderCache

    asr = Qwen3ASRModel.from_pretrained(str(asr_model_dir), dtype=torch.float32, device_map="cpu")
    tower = asr.model.thinker.audio_tower
    apply_encoder_windows(tower)
    original = tower.forward
    rng = np.random.default_rng(2)
    audio = (0.3 * rng.standard_normal(19 * 16000)).astype(np.float32)
    expected = {}
    mels = {}
    for seconds in (3.0, 8.5, 12.0, 19.0):  # growing audio, as in streaming steps; 8 s windows finish
        features = asr.processor.feature_extractor(
            audio[: int(seconds * 16000)], sampling_rate=16000, return_attention_mask=True, return_tensors="pt"
        )
        frames = int(features["attention_mask"].sum())
        mels[seconds] = (features["input_features"][0], frames)
        with torch.no_grad():
            expected[seconds] = original(
                mels[seconds][0][:, :frames], feature_lens=torch.tensor([frames])
            ).last_hidden_state
    cache = EncoderCache(tower)
    for seconds, (mel, frames) in mels.items():
        with torch.no_grad():
            got = tower(mel[:, :frames], feature_lens=torch.tensor([frames])).last_hidden_state
        assert got.shape == expected[seconds].shape
        assert torch.allclose(got, expected[seconds], atol=1e-5), (seconds, (got - expected[seconds]).abs().max())
    assert cache.chunk_hits > 0 and cache.window_hits > 0


def test_engine_patches_leave_the_official_output_unchanged(asr_model_dir):
    """The engine's changes to the model (last-position head, windows, encoder cache) change no output
    of the official transcribe for audio within one window, compared with a model loaded untouched."""
    from qwen_asr import Qwen3ASRModel

    from wyoming_qwen_asr.engine import AsrEngine

    engine = AsrEngine.load(asr_model_dir, "cpu", torch.float32)
    stock = Qwen3ASRModel.from_pretrained(str(asr_model_dir), dtype=torch.float32, device_map="cpu")
    from wyoming_qwen_asr.model_io import max_new_tokens_for

    stock.max_new_tokens = max_new_tokens_for(3.0)
    audio = (0.2 * np.random.default_rng(3).standard_normal(3 * 16000)).astype(np.float32)
    for _ in range(2):  # the second pass runs on cached encoder work
        ours = official_transcribe(engine, audio, "ctx", "English")
        theirs = stock.transcribe((audio, 16000), context="ctx", language="English")[0]
        assert ours.text == theirs.text and ours.text
    assert engine.encoder_cache.chunk_hits > 0


def test_the_engine_logs_its_attention_and_keeps_the_windows_on_sdpa(asr_model_dir, caplog):
    """Without flash-attn (or a GPU) the choice is sdpa, logged, and the window patch is applied."""
    import logging

    from wyoming_qwen_asr.engine import AsrEngine

    with caplog.at_level(logging.INFO, logger="wyoming_qwen_asr.engine"):
        engine = AsrEngine.load(asr_model_dir, "cpu", torch.float32)
    assert "attention sdpa" in caplog.text
    assert engine.model.thinker.audio_tower.config._attn_implementation == "sdpa"
    assert engine.windowed_encoder is True
