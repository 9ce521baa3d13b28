"""What one ASR server process serves: its options, its `describe` answer and its model manager."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

from wyoming.event import Event

from shared.connection import WRITE_TIMEOUT
from shared.devices import wants_cuda
from shared.languages import ASR_LANGUAGES
from shared.model_manager import ModelManager
from shared.server import model_loader, new_manager

from .info import choose_model, describer
from .model_io import MAX_UTTERANCE_SECONDS

MODEL_KEY = "asr"


@dataclass
class AsrApp:
    describe: Callable[[], Event]
    manager: ModelManager
    model: str
    chunk_seconds: float
    context: str
    default_language: Optional[str]  # Qwen's name; None lets the model detect it
    model_key: str = MODEL_KEY
    write_timeout: float = WRITE_TIMEOUT
    max_utterance_seconds: float = MAX_UTTERANCE_SECONDS
    vad_endpointing: Optional[float] = None  # seconds of silence that end an utterance; None: audio-stop does
    vad: bool = True  # the speech gate keeps silence from the model (endpointing.py)

    @property
    def preload_key(self) -> str:
        return self.model_key

    @property
    def summary(self) -> str:
        return self.model

    def handler(self, reader, writer):
        from .handler import AsrEventHandler

        return AsrEventHandler(reader, writer, self)


def create_app(args: argparse.Namespace, manager: Optional[ModelManager] = None) -> AsrApp:
    """Build the app without loading anything: the model loads on first use (or `--preload`)."""
    model = choose_model(args.model, args.device)
    manager = manager or new_manager(args)
    loader = model_loader(model, args, partial(_load_engine, args.cuda_graphs, args.int8_packing))
    manager.register(MODEL_KEY, loader, args.idle_unload, warm_after_load=wants_cuda(args.device))
    return AsrApp(
        describe=describer(args),
        manager=manager,
        model=model,
        chunk_seconds=args.chunk_seconds,
        context=args.context or "",
        default_language=ASR_LANGUAGES.to_qwen_name(args.language),
        write_timeout=args.write_timeout,
        max_utterance_seconds=args.max_utterance_seconds,
        vad_endpointing=args.vad_endpointing,
        vad=args.vad == "on",
    )


def _load_engine(cuda_graphs: bool, int8_packing: str, path, device, dtype, quantize):
    from .engine import AsrEngine

    return AsrEngine.load(path, device, dtype, quantize=quantize, cuda_graphs=cuda_graphs, int8_packing=int8_packing)
