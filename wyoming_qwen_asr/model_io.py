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


# An utterance longer than this is refused. Home Assistant commands last seconds and a dictated note a
# minute or two; the official model takes 20 minutes per decode (and splits longer audio), but on a
# CPU the final decode of such audio holds the one inference thread, and so every other client, for
# many minutes. 300 s keeps that wait in minutes and a connection's audio at 9.6 MB.
MAX_UTTERANCE_SECONDS = 300.0

# The audio formats audio-start may announce; everything is converted to 16 kHz mono 16-bit on arrival.
# 8 kHz is telephone audio, 192 kHz the highest rate of common sound cards; 1 to 4 bytes per sample
# (8-bit unsigned, 16, 24 and 32-bit signed, as `wyoming` converts them); up to 8 channels (7.1),
# mixed down to mono.
MIN_RATE = 8000
MAX_RATE = 192000
WIDTHS = (1, 2, 3, 4)
MAX_CHANNELS = 8


def format_problem(rate: int, width: int, channels: int) -> str:
    """What is wrong with an announced audio format, or "" when the server takes it."""
    problems = []
    if not MIN_RATE <= rate <= MAX_RATE:
        problems.append(f"rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE}")
    if width not in WIDTHS:
        problems.append(f"width {width} bytes is not one of {', '.join(map(str, WIDTHS))}")
    if not 1 <= channels <= MAX_CHANNELS:
        problems.append(f"{channels} channels is outside 1..{MAX_CHANNELS}")
    return "; ".join(problems)
