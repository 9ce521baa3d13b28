"""Language codes (as Home Assistant sends them) to the names the Qwen models take, and back.

One table with one contract serves both servers: each model family supports a subset of the codes.
Names are Qwen3-ASR's spelling (`English`); qwen-tts lower-cases whatever it is given. No torch here.
"""

from __future__ import annotations

from typing import Iterable, List, Optional

# Qwen3-ASR's 30 languages, in the order of qwen_asr.inference.utils.SUPPORTED_LANGUAGES
QWEN_LANGUAGE_NAMES = {
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

# other spellings clients send: regional tags that mean a different Qwen language, and synonyms
_ALIASES = {"zh-hk": "yue", "zh-mo": "yue", "tl": "fil"}
_NO_LANGUAGE = ("", "auto", "none")


class UnsupportedLanguage(ValueError):
    pass


class LanguageTable:
    """The languages one model family supports."""

    def __init__(self, model: str, codes: Iterable[str]) -> None:
        self.model = model
        self.codes: List[str] = list(codes)
        self._names = {code: QWEN_LANGUAGE_NAMES[code] for code in self.codes}
        self._codes_by_name = {name.lower(): code for code, name in self._names.items()}

    def to_qwen_name(self, language: Optional[str]) -> Optional[str]:
        """Qwen's name for a code (`en`, `en-US`, `zh_CN`) or a name (`english`); None for none/auto.

        Raises UnsupportedLanguage, naming what is supported, for anything else.
        """
        tag = (language or "").strip().lower().replace("_", "-")
        if tag in _NO_LANGUAGE:
            return None
        # a regional alias only where this model has that language: zh-HK is Cantonese to Qwen3-ASR,
        # Chinese to Qwen3-TTS
        for code in (_ALIASES.get(tag), self._codes_by_name.get(tag), tag.split("-")[0]):
            if code in self._names:
                return self._names[code]
        supported = ", ".join(f"{code} ({name})" for code, name in self._names.items())
        raise UnsupportedLanguage(f"Language {language!r} is not supported by {self.model}. Supported: {supported}")

    def to_code(self, name: Optional[str]) -> Optional[str]:
        """The code of one of Qwen's names, any case (`English`, `english` -> `en`); None when unknown.

        Qwen3-ASR may report mixed speech as "Chinese,English": the first language counts.
        """
        first = (name or "").split(",")[0].strip().lower()
        return self._codes_by_name.get(first)

    def codes_of(self, names: Iterable[str]) -> List[str]:
        """Codes of the names a model lists, skipping what is no request language (`auto`, dialects)."""
        return [code for code in map(self.to_code, names) if code is not None]


ASR_LANGUAGES = LanguageTable("Qwen3-ASR", QWEN_LANGUAGE_NAMES)
TTS_LANGUAGES = LanguageTable("Qwen3-TTS", ["zh", "en", "ja", "ko", "de", "fr", "ru", "pt", "es", "it"])
