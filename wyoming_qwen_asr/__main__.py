"""`wyoming-qwen-asr`: the Wyoming speech-to-text server."""

from __future__ import annotations

import argparse
import logging
from functools import partial
from typing import List, Optional

from shared.cli import EnvArgumentParser, add_common_options
from shared.launcher import ServerKind, main
from shared.server import serve, start_preload

_LOGGER = logging.getLogger("wyoming_qwen_asr")


def build_parser() -> EnvArgumentParser:
    parser = EnvArgumentParser(
        prog="wyoming-qwen-asr",
        description="Wyoming speech-to-text server on Qwen3-ASR with streaming partial transcripts",
        env_prefix="QWEN_ASR_",
    )
    add_common_options(parser, default_port=10300)
    parser.add_argument(
        "--model",
        default="auto",
        help="Hub id (Qwen/Qwen3-ASR-0.6B, Qwen/Qwen3-ASR-1.7B) or local directory; "
        "auto: 1.7B on CUDA, 0.6B on CPU",
    )
    parser.add_argument(
        "--language",
        default=None,
        help="Language for requests that name none (code such as en or a name); default: detect",
    )
    parser.add_argument("--context", default="", help="Biasing text added to every request's context")
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=2.0,
        help="Streaming step: a partial transcript is decoded after each this much new audio",
    )
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.chunk_seconds <= 0:
        parser.error("--chunk-seconds must be above 0")
    from .languages import UnsupportedLanguage, to_qwen_name

    try:
        to_qwen_name(args.language)
    except UnsupportedLanguage as err:
        parser.error(str(err))
    return args


def describe(args: argparse.Namespace):
    """The `describe` answer, torch-free: what the gateway sends without a worker."""
    from .app import choose_model
    from .info import build_info

    event = build_info(choose_model(args.model, args.device)).event()
    return lambda: event


async def serve_here(args: argparse.Namespace) -> None:
    """This process serves transcriptions itself (`--no-gateway`, and every worker)."""
    from .app import create_app
    from .handler import AsrEventHandler

    app = create_app(args)
    _LOGGER.info("Serving %s on %s", app.model, args.uri)
    if args.preload:
        start_preload(app.manager, app.model_key)
    await serve(args.uri, partial(AsrEventHandler, app=app))


KIND = ServerKind("wyoming_qwen_asr", "asr", "qwen_asr", describe, serve_here)


def run(argv: Optional[List[str]] = None) -> None:
    main(KIND, parse_args, argv)


if __name__ == "__main__":
    run()
