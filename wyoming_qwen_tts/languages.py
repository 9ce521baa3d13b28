"""Qwen3-TTS languages as language codes and back (no torch here)."""

from __future__ import annotations

from typing import Iterable, List, Optional

CODE_TO_NAME = {
    "zh": "chinese",
    "en": "english",
    "ja": "japanese",
    "ko": "korean",
    "de": "german",
    "fr": "french",
    "ru": "russian",
    "pt": "portuguese",
    "es": "spanish",
    "it": "italian",
}
NAME_TO_CODE = {name: code for code, name in CODE_TO_NAME.items()}


def to_qwen_name(language: Optional[str]) -> Optional[str]:
    """Qwen's lower-case name for a code (`en`, `de-DE`) or a name (`German`); None for auto/unknown."""
    if not language or not language.strip():
        return None
    tag = language.strip().lower().replace("_", "-")
    if tag == "auto":
        return None
    if tag in NAME_TO_CODE:
        return tag
    return CODE_TO_NAME.get(tag.split("-")[0])


def codes_for(names: Iterable[str]) -> List[str]:
    """Codes of the model's languages, skipping `auto` and dialects (which are not request languages)."""
    return [NAME_TO_CODE[n] for n in names if n in NAME_TO_CODE]
