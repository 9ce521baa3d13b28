"""The `describe` answer, built without torch from the voice catalogue."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

from wyoming.event import Event

from wyoming.info import Attribution, Info, TtsProgram, TtsVoice

from shared import __version__

from .voices import Voice, catalogue

PROGRAM_NAME = "qwen3-tts"
QWEN_ATTRIBUTION = Attribution(name="Qwen team, Alibaba Cloud", url="https://github.com/QwenLM/Qwen3-TTS")


def build_info(voices: Iterable[Voice], streaming: bool) -> Info:
    return Info(
        tts=[
            TtsProgram(
                name=PROGRAM_NAME,
                description="Qwen3-TTS with preset, cloned and designed voices",
                attribution=Attribution(name="wyoming-qwen", url="https://github.com/wyoming-qwen/wyoming-qwen"),
                installed=True,
                version=__version__,
                voices=[
                    TtsVoice(name=v.name, description=v.description, attribution=QWEN_ATTRIBUTION,
                             installed=True, version=None, languages=list(v.languages))
                    for v in voices
                ],
                supports_synthesize_streaming=streaming,
            )
        ]
    )


def describe_event(preset_model: str, voices_dir: Optional[str], data_dirs: Optional[Sequence[str]],
                   streaming: bool) -> Event:
    return build_info(catalogue(preset_model, voices_dir, data_dirs).values(), streaming).event()
