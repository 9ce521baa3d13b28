"""The `describe` answer and the models behind it, built without torch from the voice catalogue."""

from __future__ import annotations

import argparse
from typing import Callable, Dict, Iterable

from wyoming.event import Event
from wyoming.info import Attribution, Info, TtsProgram, TtsVoice

from shared import __version__
from shared.devices import wants_cuda

from .voices import CLONE, DESIGN, PRESET, Voice, catalogue

PROGRAM_NAME = "qwen3-tts"
PROJECT_ATTRIBUTION = Attribution(name="wyoming-qwen", url="https://github.com/wyoming-qwen/wyoming-qwen")
QWEN_ATTRIBUTION = Attribution(name="Qwen team, Alibaba Cloud", url="https://github.com/QwenLM/Qwen3-TTS")
DEFAULT_MODELS = {
    # (CPU, CUDA)
    PRESET: ("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"),
    CLONE: ("Qwen/Qwen3-TTS-12Hz-0.6B-Base", "Qwen/Qwen3-TTS-12Hz-1.7B-Base"),
    DESIGN: ("Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign", "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign"),
}


def choose_models(args: argparse.Namespace) -> Dict[str, str]:
    """The model that speaks each kind of voice: hub id or directory."""
    cuda = wants_cuda(args.device)
    chosen = {kind: pair[1 if cuda else 0] for kind, pair in DEFAULT_MODELS.items()}
    for kind, value in ((PRESET, args.model), (CLONE, args.clone_model), (DESIGN, args.design_model)):
        if value and value != "auto":
            chosen[kind] = value
    return chosen


def build_info(voices: Iterable[Voice], streaming: bool) -> Info:
    return Info(
        tts=[
            TtsProgram(
                name=PROGRAM_NAME,
                description="Qwen3-TTS with preset, cloned and designed voices",
                attribution=PROJECT_ATTRIBUTION,
                installed=True,
                version=__version__,
                voices=[
                    TtsVoice(
                        name=v.name,
                        description=v.description,
                        attribution=QWEN_ATTRIBUTION,
                        installed=True,
                        version=None,
                        languages=list(v.languages),
                    )
                    for v in voices
                ],
                supports_synthesize_streaming=streaming,
            )
        ]
    )


def describer(args: argparse.Namespace) -> Callable[[], Event]:
    """The `describe` answer for these options; the voices folder is read again each time, so a new
    voice appears without a restart. The gateway and the worker both use it."""
    preset_model = choose_models(args)[PRESET]
    data_dirs = list(args.data_dir or [])
    streaming = not args.no_streaming

    def describe() -> Event:
        return build_info(catalogue(preset_model, args.voices_dir, data_dirs).values(), streaming).event()

    return describe
