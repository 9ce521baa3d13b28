"""Qwen3-TTS through the official wrapper: one sentence at a time, on the inference thread."""

from __future__ import annotations

import logging
import math
import time
import unicodedata
from pathlib import Path
from typing import Optional

import numpy as np

from .clone_prompts import ClonePromptCache
from .voices import CLONE, DESIGN, PRESET, Voice

_LOGGER = logging.getLogger(__name__)

SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920  # one 12.5 Hz codec frame
# Generation cap from text length, so weights that never emit EOS (random ones, a misbehaving
# checkpoint) stop anyway: about 4x a normal speaking rate (Latin script ~0.8 frames per character,
# CJK ~3 per character) plus a margin for short texts.
FRAMES_PER_CHAR = 3.0
FRAMES_PER_WIDE_CHAR = 10.0
FRAME_MARGIN = 12


def max_frames_for(text: str) -> int:
    wide = sum(1 for ch in text if unicodedata.east_asian_width(ch) in ("W", "F"))
    narrow = sum(1 for ch in text if not ch.isspace()) - wide
    return int(math.ceil(FRAMES_PER_CHAR * narrow + FRAMES_PER_WIDE_CHAR * wide)) + FRAME_MARGIN


class TtsEngine:
    """A loaded Qwen3-TTS model of one kind (CustomVoice, Base or VoiceDesign)."""

    def __init__(self, tts, model_id: str) -> None:
        self.tts = tts
        self.model_id = model_id
        self.kind = tts.model.tts_model_type
        self.clone_prompts = ClonePromptCache(model_id)

    @classmethod
    def load(cls, path: Path, model_id: str, device: str, dtype) -> "TtsEngine":
        started = time.monotonic()
        from qwen_tts import Qwen3TTSModel

        imported = time.monotonic()
        tts = Qwen3TTSModel.from_pretrained(str(path), dtype=dtype, device_map=device)
        _LOGGER.info(
            "Qwen3-TTS %s from %s on %s (%s): import %.2f s, load %.2f s",
            tts.model.tts_model_type, path, device, str(dtype).replace("torch.", ""),
            imported - started, time.monotonic() - imported,
        )
        return cls(tts, model_id)

    def synthesize(self, text: str, voice: Voice, language: Optional[str]) -> np.ndarray:
        """Float32 audio at 24 kHz for one sentence (capped by `max_frames_for`)."""
        kwargs = dict(language=language or "auto", max_new_tokens=max_frames_for(text) + 1)
        if voice.kind == PRESET:
            wavs, rate = self.tts.generate_custom_voice(text=text, speaker=voice.name, **kwargs)
        elif voice.kind == CLONE:
            prompt = self.clone_prompts.get(self.tts, voice.folder)
            wavs, rate = self.tts.generate_voice_clone(text=text, voice_clone_prompt=prompt, **kwargs)
        elif voice.kind == DESIGN:
            wavs, rate = self.tts.generate_voice_design(text=text, instruct=voice.instruct, **kwargs)
        else:  # pragma: no cover
            raise ValueError(f"Unknown voice kind {voice.kind}")
        assert rate == SAMPLE_RATE, rate
        return np.asarray(wavs[0], dtype=np.float32)
