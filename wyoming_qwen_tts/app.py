"""What one TTS server process serves: options, voices, `describe`, and up to three models."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, List, Optional

from wyoming.event import Event

from shared.connection import WRITE_TIMEOUT
from shared.devices import wants_cuda
from shared.languages import TTS_LANGUAGES
from shared.model_manager import ModelManager
from shared.server import model_loader, new_manager

from .info import choose_models, describer
from .voices import CLONE, DESIGN, PRESET, Voice, catalogue, find_voice

# the model that speaks each kind of voice, by manager key
MODEL_KEYS = {PRESET: "custom-voice", CLONE: "clone", DESIGN: "design"}


@dataclass
class TtsApp:
    describe: Callable[[], Event]
    manager: ModelManager
    models: Dict[str, str]  # voice kind -> hub id or directory
    voices_dir: Optional[str]
    default_voice: Optional[str]
    default_language: Optional[str]  # Qwen name; None = the model's auto
    samples_per_chunk: int
    first_chunk_frames: Optional[int]  # None: whole sentences; 0: the engine's default
    data_dirs: List[str] = field(default_factory=list)
    preload_key: str = MODEL_KEYS[PRESET]
    write_timeout: float = WRITE_TIMEOUT

    @property
    def summary(self) -> str:
        return ", ".join(f"{kind}: {model}" for kind, model in self.models.items())

    def handler(self, reader, writer):
        from .handler import TtsEventHandler

        return TtsEventHandler(reader, writer, self)

    def voices(self) -> Dict[str, Voice]:
        """Read the catalogue again (cheap, torch-free), so new voice folders appear at once."""
        return catalogue(self.models[PRESET], self.voices_dir, self.data_dirs)

    def choose_voice(self, name: Optional[str]) -> Voice:
        voices = self.voices()
        wanted = name or self.default_voice
        if wanted:
            return find_voice(voices, wanted)
        for fallback in ("ryan", *voices):
            if fallback in voices:
                return voices[fallback]
        return find_voice(voices, "(none)")


def create_app(args: argparse.Namespace, manager: Optional[ModelManager] = None) -> TtsApp:
    models = choose_models(args)
    manager = manager or new_manager(args)
    for kind, model in models.items():
        load = partial(_load_engine, model, args.cuda_graphs, args.int8_packing)
        loader = model_loader(model, args, load)
        manager.register(MODEL_KEYS[kind], loader, args.idle_unload, warm_after_load=wants_cuda(args.device))
    return TtsApp(
        describe=describer(args),
        manager=manager,
        models=models,
        voices_dir=args.voices_dir,
        default_voice=args.voice,
        default_language=TTS_LANGUAGES.to_qwen_name(args.language),
        samples_per_chunk=args.samples_per_chunk,
        first_chunk_frames=None if args.no_frame_streaming else (args.first_chunk_frames or 0),
        data_dirs=list(args.data_dir or []),
        write_timeout=args.write_timeout,
    )


def _load_engine(model_id: str, cuda_graphs: bool, int8_packing: str, path, device, dtype, quantize):
    from .engine import TtsEngine

    return TtsEngine.load(
        path, model_id, device, dtype, quantize=quantize, cuda_graphs=cuda_graphs, int8_packing=int8_packing
    )
