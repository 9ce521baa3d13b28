"""What the shared launcher and gateway need to know of the speech-to-text server."""

from __future__ import annotations

from shared.gateway import ReplyTracker
from shared.launcher import ServerKind

from .app import create_app
from .info import describer
from .options import parse_args


class TranscriptionReplies(ReplyTracker):
    """After `audio-stop` the client waits for its transcript, which `transcript-stop` ends. With
    `--vad-endpointing` the transcript may come first: the utterance's late `audio-stop` then waits for
    nothing."""

    waits_after = ReplyTracker.waits_after | {"audio-stop"}
    completed_by = ReplyTracker.completed_by | {"transcript-stop"}
    opened_by = frozenset({"transcribe", "audio-start", "audio-chunk"})

    def __init__(self) -> None:
        self._answered = False  # the utterance's transcript is out

    def client_sent(self, event_type: str) -> bool:
        if event_type in ("transcribe", "audio-start"):
            self._answered = False
        elif event_type == "audio-stop" and self._answered:
            self._answered = False
            return False
        return super().client_sent(event_type)

    def worker_sent(self, event_type: str) -> bool:
        if event_type == "transcript-stop":
            self._answered = True
        return super().worker_sent(event_type)


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
