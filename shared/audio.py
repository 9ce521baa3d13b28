"""PCM helpers."""

from __future__ import annotations

from typing import Iterator

import numpy as np


def float_to_pcm16(audio: np.ndarray) -> bytes:
    """Float audio in [-1, 1] to signed 16-bit PCM. Clipped first (a model can overshoot), and never
    normalised: per-chunk normalisation makes loudness jump between chunks."""
    return (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def chunks(pcm: bytes, samples_per_chunk: int, width: int = 2) -> Iterator[bytes]:
    step = max(1, samples_per_chunk) * width
    for start in range(0, len(pcm), step):
        yield pcm[start : start + step]
