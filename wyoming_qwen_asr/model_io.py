"""What Qwen3-ASR takes in and how much it may say: light constants, no torch."""

from __future__ import annotations

import math

SAMPLE_RATE = 16000  # the model hears 16 kHz mono; other formats are converted on arrival
# Output cap from audio length, so a model that never emits EOS (random weights, a misbehaving
# checkpoint) stops anyway. Real speech is 2-6 tokens per second in Qwen's tokenizer; the margin
# covers the "language X<asr_text>" header.
TOKENS_PER_SECOND = 12
TOKEN_MARGIN = 24


def max_new_tokens_for(seconds: float) -> int:
    return int(math.ceil(TOKENS_PER_SECOND * max(seconds, 0.0))) + TOKEN_MARGIN
