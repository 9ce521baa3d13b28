"""The text-to-speech server's command line (the options both servers have are in `shared.cli`)."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from shared.cli import EnvArgumentParser, server_parser
from shared.languages import TTS_LANGUAGES, UnsupportedLanguage


def build_parser() -> EnvArgumentParser:
    parser = server_parser(
        "tts",
        10200,
        "Wyoming text-to-speech server on Qwen3-TTS with preset, cloned and designed voices",
        "CustomVoice model for the preset speakers (hub id or directory); auto: 0.6B on CPU, 1.7B on CUDA",
    )
    parser.add_argument(
        "--clone-model", default="auto", help="Base model for cloned voices, loaded only when one is used"
    )
    parser.add_argument(
        "--design-model",
        default="auto",
        help="VoiceDesign model for designed voices (1.7B only), loaded only when one is used",
    )
    parser.add_argument(
        "--voices-dir",
        default=None,
        help="Folder of voices: <name>/reference.wav + reference.txt (cloned) or <name>/description.txt (designed)",
    )
    parser.add_argument("--voice", default=None, help="Default voice (default: ryan, else the first)")
    parser.add_argument("--language", default="auto", help="Default language: a code (en), a name, or auto")
    parser.add_argument("--samples-per-chunk", type=int, default=1024, help="Samples per audio-chunk event")
    parser.add_argument(
        "--first-chunk-frames",
        type=int,
        default=None,
        help="Frame streaming: the first audio of a sentence goes out after this many 12.5 Hz codec frames "
        "(80 ms each); default 1",
    )
    parser.add_argument(
        "--no-frame-streaming",
        action="store_true",
        help="Synthesize whole sentences instead of streaming each one frame by frame",
    )
    # on by default since CUDA graphs were measured on a GPU; the flag of earlier releases is still accepted
    parser.add_argument("--cuda-graphs", dest="cuda_graphs", action="store_true", default=True, help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-streaming",
        action="store_true",
        help="Do not advertise streaming text input (synthesize-start/-chunk/-stop)",
    )
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        TTS_LANGUAGES.to_qwen_name(args.language)
    except UnsupportedLanguage as err:
        parser.error(f"--language: {err}")
    for option in ("first_chunk_frames", "samples_per_chunk"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    return args
