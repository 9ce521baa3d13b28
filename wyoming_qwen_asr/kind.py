"""What the shared launcher and gateway need to know of the speech-to-text server."""

from __future__ import annotations

from shared.gateway import ReplyTracker
from shared.launcher import ServerKind

from .app import create_app
from .info import describer
from .options import parse_args


class TranscriptionReplies(ReplyTracker):
    """After `audio-stop` the client waits for its transcript, which `transcript-stop` ends."""

    waits_after = ReplyTracker.waits_after | {"audio-stop"}
    completed_by = ReplyTracker.completed_by | {"transcript-stop"}
    opened_by = frozenset({"transcribe", "audio-start", "audio-chunk"})


KIND = ServerKind(
    __package__,
    "qwen_asr",
    parse_args,
    describer,
    create_app,
    TranscriptionReplies,
    warms_peers_on=frozenset({"audio-start"}),  # an utterance starts: a TTS request follows in seconds
    http_api="wyoming_qwen_asr.http_api",
)
