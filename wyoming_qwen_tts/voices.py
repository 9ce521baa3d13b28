"""The voice catalogue: preset speakers, cloned voices and designed voices, read without torch.

A voices folder holds one sub-folder per voice:

    VOICES/<name>/reference.wav + reference.txt   a cloned voice (Base model), from a few seconds of speech
    VOICES/<name>/description.txt                  a designed voice (VoiceDesign model): the description
                                                    becomes the instruct text
    VOICES/<name>/language.txt                     optional: the voice's language (code or name)

The folder is read again on every `describe`, so a new voice appears without a restart. Voices are
only ever found by listing the folder, so a requested name can never reach a path outside it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from shared.hub_cache import find_cached
from shared.languages import TTS_LANGUAGES, UnsupportedLanguage

_LOGGER = logging.getLogger(__name__)

PRESET, CLONE, DESIGN = "preset", "clone", "design"

# The official CustomVoice speakers (used for `describe` before the model is on disk)
OFFICIAL_SPEAKERS = {
    "vivian": "Vivian: bright young female voice (Chinese)",
    "serena": "Serena: warm gentle female voice (Chinese)",
    "uncle_fu": "Uncle Fu: seasoned male voice, low and mellow (Chinese)",
    "dylan": "Dylan: youthful male voice (Beijing dialect)",
    "eric": "Eric: lively male voice (Sichuan dialect)",
    "ryan": "Ryan: dynamic male voice (English)",
    "aiden": "Aiden: sunny American male voice (English)",
    "ono_anna": "Ono Anna: playful female voice (Japanese)",
    "sohee": "Sohee: warm female voice (Korean)",
}


@dataclass(frozen=True)
class Voice:
    name: str
    kind: str  # PRESET, CLONE or DESIGN
    description: str
    languages: List[str] = field(default_factory=list)  # codes
    language: Optional[str] = None  # Qwen name of the voice's own language, if it has one
    folder: Optional[Path] = None
    instruct: str = ""  # designed voices: their description


class UnknownVoice(KeyError):
    def __init__(self, name: str, available: Sequence[str]) -> None:
        super().__init__(name)
        self.message = f"Unknown voice {name!r}. Available voices: {', '.join(available) or 'none'}"

    def __str__(self) -> str:
        return self.message


def read_model_config(model: str, data_dirs: Optional[Sequence[str]] = None) -> Optional[dict]:
    """config.json of a local model directory or of a hub model already in a cache, else None."""
    path = Path(model) / "config.json" if os.path.isdir(model) else find_cached(model, data_dirs or (), "config.json")
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def preset_voices(model: str, data_dirs: Optional[Sequence[str]] = None) -> List[Voice]:
    config = read_model_config(model, data_dirs)
    if config is not None:
        talker = config.get("talker_config", {})
        speakers = sorted(talker.get("spk_id", {}))
        languages = TTS_LANGUAGES.codes_of(talker.get("codec_language_id", {}))
    else:
        speakers, languages = list(OFFICIAL_SPEAKERS), list(TTS_LANGUAGES.codes)
    return [
        Voice(
            name=s, kind=PRESET, description=OFFICIAL_SPEAKERS.get(s, s.replace("_", " ").title()), languages=languages
        )
        for s in speakers
    ]


def folder_voices(voices_dir: Optional[str]) -> List[Voice]:
    if not voices_dir or not os.path.isdir(voices_dir):
        return []
    voices = []
    for folder in sorted(Path(voices_dir).iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        qwen_language = _voice_language(folder)
        languages = TTS_LANGUAGES.codes_of([qwen_language]) if qwen_language else list(TTS_LANGUAGES.codes)
        if (folder / "reference.wav").is_file() and (folder / "reference.txt").is_file():
            voices.append(
                Voice(
                    name=folder.name,
                    kind=CLONE,
                    description=f"{folder.name} (cloned voice)",
                    languages=languages,
                    language=qwen_language,
                    folder=folder,
                )
            )
        elif (folder / "description.txt").is_file():
            description = _read_text(folder / "description.txt")
            voices.append(
                Voice(
                    name=folder.name,
                    kind=DESIGN,
                    description=f"{folder.name}: {description}"[:200],
                    languages=languages,
                    language=qwen_language,
                    folder=folder,
                    instruct=description,
                )
            )
        else:
            _LOGGER.debug("Skipping %s: no reference.wav + reference.txt, no description.txt", folder)
    return voices


def catalogue(model: str, voices_dir: Optional[str], data_dirs: Optional[Sequence[str]] = None) -> Dict[str, Voice]:
    """All voices by name. A folder named like a preset speaker is skipped (the preset keeps its name)."""
    voices: Dict[str, Voice] = {v.name: v for v in preset_voices(model, data_dirs)}
    for voice in folder_voices(voices_dir):
        if voice.name.lower() in voices:
            _LOGGER.warning("Voice folder %s has a preset speaker's name; the preset is used", voice.folder)
            continue
        voices[voice.name] = voice
    return voices


def find_voice(voices: Dict[str, Voice], name: str) -> Voice:
    if name in voices:
        return voices[name]
    lowered = {v.lower(): v for v in voices}
    if name.lower() in lowered:
        return voices[lowered[name.lower()]]
    raise UnknownVoice(name, list(voices))


def _voice_language(folder: Path) -> Optional[str]:
    language = _read_text(folder / "language.txt")
    try:
        return TTS_LANGUAGES.to_qwen_name(language)
    except UnsupportedLanguage as err:
        _LOGGER.warning("Ignoring %s: %s", folder / "language.txt", err)
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
