"""The `describe` answer and the model it names, built without torch so it is instant in any state."""

from __future__ import annotations

import argparse
from typing import Callable

from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from shared import __version__
from shared.devices import wants_cuda
from shared.languages import ASR_LANGUAGES

PROGRAM_NAME = "qwen3-asr"
PROJECT_ATTRIBUTION = Attribution(name="wyoming-qwen", url="https://github.com/wyoming-qwen/wyoming-qwen")
QWEN_ATTRIBUTION = Attribution(name="Qwen team, Alibaba Cloud", url="https://github.com/QwenLM/Qwen3-ASR")
MODEL_CPU = "Qwen/Qwen3-ASR-0.6B"
MODEL_CUDA = "Qwen/Qwen3-ASR-1.7B"


def choose_model(model: str, device: str) -> str:
    if model != "auto":
        return model
    return MODEL_CUDA if wants_cuda(device) else MODEL_CPU


def build_info(model: str, endpointing: bool = False) -> Info:
    return Info(
        asr=[
            AsrProgram(
                name=PROGRAM_NAME,
                description="Qwen3-ASR speech-to-text with streaming partial transcripts",
                attribution=PROJECT_ATTRIBUTION,
                installed=True,
                version=__version__,
                models=[
                    AsrModel(
                        name=model,
                        description=f"Qwen3-ASR ({model})",
                        attribution=QWEN_ATTRIBUTION,
                        installed=True,
                        version=None,
                        languages=list(ASR_LANGUAGES.codes),
                    )
                ],
                supports_transcript_streaming=True,
                # with --vad-endpointing the server ends utterances itself
                requires_external_vad=not endpointing,
            )
        ]
    )


def describer(args: argparse.Namespace) -> Callable[[], Event]:
    """The `describe` answer for these options; the gateway and the worker both use it."""
    event = build_info(choose_model(args.model, args.device), args.vad_endpointing is not None).event()
    return lambda: event
