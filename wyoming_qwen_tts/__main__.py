"""`wyoming-qwen-tts`: the Wyoming text-to-speech server."""

from __future__ import annotations

import argparse
import logging
from functools import partial
from typing import List, Optional

from shared.cli import EnvArgumentParser, add_common_options
from shared.launcher import ServerKind, main
from shared.server import serve, start_preload

_LOGGER = logging.getLogger("wyoming_qwen_tts")


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="wyoming-qwen-tts",
        description="Wyoming text-to-speech server on Qwen3-TTS with preset, cloned and designed voices",
        env_prefix="QWEN_TTS_",
    )
    add_common_options(parser, default_port=10200)
    parser.add_argument("--model", default="auto",
                        help="CustomVoice model for the preset speakers (hub id or directory); "
                        "auto: 0.6B on CPU, 1.7B on CUDA")
    parser.add_argument("--clone-model", default="auto",
                        help="Base model for cloned voices, loaded only when one is used")
    parser.add_argument("--design-model", default="auto",
                        help="VoiceDesign model for designed voices (1.7B only), loaded only when one is used")
    parser.add_argument("--voices-dir", default=None,
                        help="Folder of voices: <name>/reference.wav + reference.txt (cloned) "
                        "or <name>/description.txt (designed)")
    parser.add_argument("--voice", default=None, help="Default voice (default: ryan, else the first)")
    parser.add_argument("--language", default="auto", help="Default language: a code (en), a name, or auto")
    parser.add_argument("--samples-per-chunk", type=int, default=1024, help="Samples per audio-chunk event")
    parser.add_argument("--first-chunk-frames", type=int, default=2,
                        help="Frame streaming: the first audio of a sentence goes out after this many "
                        "12.5 Hz codec frames (80 ms each)")
    parser.add_argument("--no-frame-streaming", action="store_true",
                        help="Synthesize whole sentences instead of streaming each one frame by frame")
    parser.add_argument("--no-streaming", action="store_true",
                        help="Do not advertise streaming text input (synthesize-start/-chunk/-stop)")
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .languages import to_qwen_name

    if args.language and args.language.lower() != "auto" and to_qwen_name(args.language) is None:
        parser.error(f"--language {args.language!r} is not a Qwen3-TTS language (zh en ja ko de fr ru pt es it)")
    if args.first_chunk_frames < 1:
        parser.error("--first-chunk-frames must be at least 1")
    if args.samples_per_chunk < 1:
        parser.error("--samples-per-chunk must be at least 1")
    return args


def describe(args: argparse.Namespace):
    """The `describe` answer, torch-free; the voices folder is read again each time."""
    from .app import choose_models
    from .info import describe_event
    from .voices import PRESET

    models = choose_models(args)
    return lambda: describe_event(models[PRESET], args.voices_dir, args.data_dir, not args.no_streaming)


async def serve_here(args: argparse.Namespace) -> None:
    """This process synthesizes itself (`--no-gateway`, and every worker)."""
    from .app import MODEL_KEYS, create_app
    from .handler import TtsEventHandler
    from .voices import PRESET

    app = create_app(args)
    _LOGGER.info("Serving %s on %s", ", ".join(f"{k}: {m}" for k, m in app.models.items()), args.uri)
    if args.preload:
        start_preload(app.manager, MODEL_KEYS[PRESET])
    await serve(args.uri, partial(TtsEventHandler, app=app))


KIND = ServerKind("wyoming_qwen_tts", "tts", "qwen_tts", describe, serve_here)


def run(argv: Optional[List[str]] = None) -> None:
    main(KIND, parse_args, argv)


if __name__ == "__main__":
    run()
