"""The official one-shot calls, for tests and benchmarks that compare our output with them."""

from __future__ import annotations

import numpy as np

from wyoming_qwen_asr.model_io import SAMPLE_RATE, max_new_tokens_for


def official_transcribe(engine, audio: np.ndarray, context: str, language):
    """qwen-asr's own `transcribe` on the engine's model, with the server's output cap."""
    engine.asr.max_new_tokens = max_new_tokens_for(len(audio) / SAMPLE_RATE)
    return engine.asr.transcribe((audio, SAMPLE_RATE), context=context, language=language)[0]


def official_codes(tts, call, seed):
    """The codes the official TTS generate returns for `call()` (a Qwen3TTSModel.generate_* call) after
    `torch.manual_seed(seed)`, captured at Qwen3TTSForConditionalGeneration.generate."""
    import torch

    captured = []
    original = tts.model.generate

    def spy(*args, **kwargs):
        codes, hidden = original(*args, **kwargs)
        captured.append(codes[0])
        return codes, hidden

    tts.model.generate = spy
    try:
        torch.manual_seed(seed)
        call()
    finally:
        del tts.model.generate
    return captured[0]
