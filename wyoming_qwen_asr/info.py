"""The `describe` answer, built without torch so it is instant in any state of the model."""

from __future__ import annotations

from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from shared import __version__

from .languages import SUPPORTED_CODES

PROGRAM_NAME = "qwen3-asr"
QWEN_ATTRIBUTION = Attribution(name="Qwen team, Alibaba Cloud", url="https://github.com/QwenLM/Qwen3-ASR")


def build_info(model: str) -> Info:
    return Info(
        asr=[
            AsrProgram(
                name=PROGRAM_NAME,
                description="Qwen3-ASR speech-to-text with streaming partial transcripts",
                attribution=Attribution(
                    name="wyoming-qwen", url="https://github.com/wyoming-qwen/wyoming-qwen"
                ),
                installed=True,
                version=__version__,
                models=[
                    AsrModel(
                        name=model,
                        description=f"Qwen3-ASR ({model})",
                        attribution=QWEN_ATTRIBUTION,
                        installed=True,
                        version=None,
                        languages=list(SUPPORTED_CODES),
                    )
                ],
                supports_transcript_streaming=True,
            )
        ]
    )
