"""The speech-to-text server's command line (the options both servers have are in `shared.cli`)."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from shared.cli import EnvArgumentParser, server_parser
from shared.languages import ASR_LANGUAGES, UnsupportedLanguage

from .endpointing import DEFAULT_SILENCE
from .model_io import MAX_UTTERANCE_SECONDS


def build_parser() -> EnvArgumentParser:
    parser = server_parser(
        "asr",
        10300,
        "Wyoming speech-to-text server on Qwen3-ASR with streaming partial transcripts",
        "Hub id (Qwen/Qwen3-ASR-0.6B, Qwen/Qwen3-ASR-1.7B) or local directory; auto: 1.7B on CUDA, 0.6B on CPU",
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
    parser.add_argument(
        "--warm-peer",
        action="append",
        default=None,
        metavar="URI",
        help="A TTS server (tcp://host:10200) told to get its model ready when an utterance starts, so its "
        "first reply is not a cold start (a `warm-up` event; harmless to other Wyoming servers). Repeatable",
    )
    parser.add_argument(
        "--max-utterance-seconds",
        type=float,
        default=MAX_UTTERANCE_SECONDS,
        help="Longest utterance accepted; a longer one gets an error and is dropped. Voice commands last "
        "seconds; the model takes up to 20 minutes, but on a CPU the final decode of long audio keeps every "
        "other client waiting for minutes",
    )
    parser.add_argument(
        "--vad",
        default="on",
        choices=["on", "off"],
        help="on: a voice-activity detector (Silero) keeps silence from the model: no decode for an utterance "
        "without speech, none of the silence around it, no streaming steps during pauses. off: every sample "
        "is decoded (for audio the detector gets wrong)",
    )
    parser.add_argument(
        "--vad-endpointing",
        nargs="?",
        type=float,
        const=DEFAULT_SILENCE,
        default=None,
        metavar="SECONDS",
        help="End an utterance on the server once this much silence follows speech (default "
        f"{DEFAULT_SILENCE:g} s), without waiting for the client's audio-stop; transcribe.vad_sensitivity "
        "scales it (relaxed 1.5x, aggressive 0.5x). A voice-activity detector (Silero) always keeps silence "
        "from the model; see the README's 'Endpointing'",
    )
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.chunk_seconds <= 0:
        parser.error("--chunk-seconds must be above 0")
    if not args.max_utterance_seconds > 0:
        parser.error("--max-utterance-seconds must be above 0")
    if args.vad_endpointing is not None and not args.vad_endpointing > 0:
        parser.error("--vad-endpointing must be above 0 seconds")
    if args.vad_endpointing is not None and args.vad == "off":
        parser.error("--vad-endpointing needs the voice-activity detector: leave --vad on")
    try:
        ASR_LANGUAGES.to_qwen_name(args.language)
    except UnsupportedLanguage as err:
        parser.error(str(err))
    return args
