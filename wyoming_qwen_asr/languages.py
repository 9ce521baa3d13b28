"""Qwen3-ASR's 30 languages as the language codes Home Assistant uses, and back (no torch here)."""

from __future__ import annotations

from typing import Optional

# Qwen3-ASR's canonical names (qwen_asr.inference.utils.SUPPORTED_LANGUAGES, in its order)
CODE_TO_NAME = {
    "zh": "Chinese",
    "en": "English",
    "yue": "Cantonese",
    "ar": "Arabic",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "pt": "Portuguese",
    "id": "Indonesian",
    "it": "Italian",
    "ko": "Korean",
    "ru": "Russian",
    "th": "Thai",
    "vi": "Vietnamese",
    "ja": "Japanese",
    "tr": "Turkish",
    "hi": "Hindi",
    "ms": "Malay",
    "nl": "Dutch",
    "sv": "Swedish",
    "da": "Danish",
    "fi": "Finnish",
    "pl": "Polish",
    "cs": "Czech",
    "fil": "Filipino",
    "fa": "Persian",
    "el": "Greek",
    "ro": "Romanian",
    "hu": "Hungarian",
    "mk": "Macedonian",
}
NAME_TO_CODE = {name: code for code, name in CODE_TO_NAME.items()}
SUPPORTED_CODES = list(CODE_TO_NAME)

# other spellings clients send: regional tags that mean a different Qwen language, and synonyms
_ALIASES = {
    "zh-hk": "Cantonese",
    "zh-mo": "Cantonese",
    "tl": "Filipino",
    "nb": None,  # not supported; listed so the error names it plainly
}


class UnsupportedLanguage(ValueError):
    def __init__(self, language: str) -> None:
        super().__init__(
            f"Language {language!r} is not supported by Qwen3-ASR. Supported: "
            + ", ".join(f"{code} ({name})" for code, name in CODE_TO_NAME.items())
        )


def to_qwen_name(language: Optional[str]) -> Optional[str]:
    """Qwen's name for a code (`en`, `en-US`, `zh_CN`) or a name (`english`); None for no language.

    Raises UnsupportedLanguage for anything else.
    """
    if language is None or not language.strip() or language.strip().lower() in ("auto", "none"):
        return None
    tag = language.strip().lower().replace("_", "-")
    if tag in _ALIASES and _ALIASES[tag] is not None:
        return _ALIASES[tag]
    primary = tag.split("-")[0]
    if primary in CODE_TO_NAME:
        return CODE_TO_NAME[primary]
    for name in CODE_TO_NAME.values():
        if name.lower() == tag:
            return name
    raise UnsupportedLanguage(language)


def to_code(name: Optional[str]) -> Optional[str]:
    """The language code for one of Qwen's names (`English` -> `en`); None when unknown or empty."""
    if not name:
        return None
    first = name.split(",")[0].strip()  # Qwen may report "Chinese,English" for mixed speech
    return NAME_TO_CODE.get(first[:1].upper() + first[1:].lower())
