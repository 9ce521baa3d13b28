"""What one ASR server process serves: its options, its `describe` answer and its model manager."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Optional

from wyoming.info import Info

from shared.devices import wants_cuda
from shared.model_manager import ModelManager

from .info import build_info
from .languages import to_qwen_name

_LOGGER = logging.getLogger(__name__)

MODEL_KEY = "asr"
MODEL_CPU = "Qwen/Qwen3-ASR-0.6B"
MODEL_CUDA = "Qwen/Qwen3-ASR-1.7B"


@dataclass
class AsrApp:
    info: Info
    manager: ModelManager
    model: str
    chunk_seconds: float
    context: str
    default_language: Optional[str]  # Qwen's name; None lets the model detect it
    model_key: str = MODEL_KEY


def choose_model(model: str, device: str) -> str:
    if model != "auto":
        return model
    return MODEL_CUDA if wants_cuda(device) else MODEL_CPU


def create_app(args: argparse.Namespace, manager: Optional[ModelManager] = None) -> AsrApp:
    """Build the app without loading anything: the model loads on first use (or `--preload`)."""
    model = choose_model(args.model, args.device)
    default_language = to_qwen_name(args.language)
    manager = manager or ModelManager(max_loaded=args.max_loaded_models)

    def load():
        from shared.devices import resolve_device, resolve_dtype
        from shared.model_store import resolve_model

        from .engine import AsrEngine

        path = resolve_model(model, args.data_dir, args.local_files_only)
        device = resolve_device(args.device)
        return AsrEngine.load(path, device, resolve_dtype(args.dtype, device))

    manager.register(MODEL_KEY, load, args.idle_unload)
    return AsrApp(
        info=build_info(model),
        manager=manager,
        model=model,
        chunk_seconds=args.chunk_seconds,
        context=args.context or "",
        default_language=default_language,
    )
