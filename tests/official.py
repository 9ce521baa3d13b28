"""The official one-shot calls, for tests and benchmarks that compare our output with them."""

from __future__ import annotations

import numpy as np

from wyoming_qwen_asr.model_io import SAMPLE_RATE, max_new_tokens_for


def official_transcribe(engine, audio: np.ndarray, context: str, language):
    """qwen-asr's own `transcribe` on the engine's model, with the server's output cap."""
    engine.asr.max_new_tokens = max_new_tokens_for(len(audio) / SAMPLE_RATE)
    return engine.asr.transcribe((audio, SAMPLE_RATE), context=context, language=language)[0]
