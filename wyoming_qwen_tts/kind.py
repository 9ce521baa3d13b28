"""What the shared launcher and gateway need to know of the text-to-speech server."""

from __future__ import annotations

from shared.gateway import ReplyTracker
from shared.launcher import ServerKind

from .app import create_app
from .info import describer
from .options import parse_args


class SynthesisReplies(ReplyTracker):
    """After `synthesize` or `synthesize-stop` the client waits for audio. A one-shot reply ends with
    `audio-stop`; a streamed one with `synthesize-stopped`. Inside a stream, `synthesize` is only the
    compat copy of the text that is still streaming in, so the client does not wait yet."""

    opened_by = frozenset({"synthesize-start", "synthesize-chunk"})

    def __init__(self) -> None:
        self._in_stream = False

    def client_sent(self, event_type: str) -> bool:
        if event_type == "synthesize-start":
            self._in_stream = True
        if event_type == "synthesize":
            return not self._in_stream
        return event_type == "synthesize-stop" or super().client_sent(event_type)

    def worker_sent(self, event_type: str) -> bool:
        if event_type == "synthesize-stopped":
            self._in_stream = False
            return True
        return (event_type == "audio-stop" and not self._in_stream) or super().worker_sent(event_type)


KIND = ServerKind(
    __package__, "qwen_tts", parse_args, describer, create_app, SynthesisReplies, http_api="wyoming_qwen_tts.http_api"
)
