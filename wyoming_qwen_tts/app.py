"""What one TTS server process serves: options, voices, `describe`, and up to three models."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from shared.devices import wants_cuda
from shared.model_manager import ModelManager

from .info import describe_event
from .languages import to_qwen_name
from .voices import CLONE, DESIGN, PRESET, Voice, catalogue, find_voice

# the model that speaks each kind of voice, by manager key
MODEL_KEYS = {PRESET: "custom-voice", CLONE: "clone", DESIGN: "design"}
DEFAULT_MODELS = {
    # (CPU, CUDA)
    PRESET: ("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"),
    CLONE: ("Qwen/Qwen3-TTS-12Hz-0.6B-Base", "Qwen/Qwen3-TTS-12Hz-1.7B-Base"),
    DESIGN: ("Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign", "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign"),
}


@dataclass
class TtsApp:
    manager: ModelManager
    models: Dict[str, str]  # voice kind -> hub id or directory
    voices_dir: Optional[str]
    default_voice: Optional[str]
    default_language: Optional[str]  # Qwen name; None = the model's auto
    samples_per_chunk: int
    streaming: bool
    first_chunk_frames: Optional[int]  # None: whole sentences
    data_dirs: List[str] = field(default_factory=list)

    def voices(self) -> Dict[str, Voice]:
        """Read the catalogue again (cheap, torch-free), so new voice folders appear at once."""
        return catalogue(self.models[PRESET], self.voices_dir, self.data_dirs)

    def describe(self):
        return describe_event(self.models[PRESET], self.voices_dir, self.data_dirs, self.streaming)

    def choose_voice(self, name: Optional[str]) -> Voice:
        voices = self.voices()
        wanted = name or self.default_voice
        if wanted:
            return find_voice(voices, wanted)
        for fallback in ("ryan", *voices):
            if fallback in voices:
                return voices[fallback]
        return find_voice(voices, "(none)")


def choose_models(args: argparse.Namespace) -> Dict[str, str]:
    cuda = wants_cuda(args.device)
    chosen = {kind: pair[1 if cuda else 0] for kind, pair in DEFAULT_MODELS.items()}
    for kind, value in ((PRESET, args.model), (CLONE, args.clone_model), (DESIGN, args.design_model)):
        if value and value != "auto":
            chosen[kind] = value
    return chosen


def create_app(args: argparse.Namespace, manager: Optional[ModelManager] = None) -> TtsApp:
    models = choose_models(args)
    manager = manager or ModelManager(max_loaded=args.max_loaded_models)
    for kind, model in models.items():
        manager.register(MODEL_KEYS[kind], _loader(model, args), args.idle_unload)
    return TtsApp(
        manager=manager,
        models=models,
        voices_dir=args.voices_dir,
        default_voice=args.voice,
        default_language=to_qwen_name(args.language),
        samples_per_chunk=args.samples_per_chunk,
        streaming=not args.no_streaming,
        first_chunk_frames=None if args.no_frame_streaming else args.first_chunk_frames,
        data_dirs=list(args.data_dir or []),
    )


def _loader(model: str, args: argparse.Namespace):
    def load():
        from shared.devices import resolve_device, resolve_dtype
        from shared.model_store import resolve_model

        from .engine import TtsEngine

        path = resolve_model(model, args.data_dir, args.local_files_only)
        device = resolve_device(args.device)
        return TtsEngine.load(path, model, device, resolve_dtype(args.dtype, device))

    return load
