"""Two events of our own, between the HTTP front and a worker: compressed audio decoded and encoded where
PyAV already is (the worker), so the gateway stays light. Other Wyoming servers never see them.

    {"type": "audio-file", "data": {"final": bool, "rate": 16000}, payload: a piece of the file}
        the pieces of one file, in order (each at most FILE_PIECE bytes, a frame's payload limit is 4 MiB);
        after the final one the worker answers audio-start, audio-chunk..., audio-stop: signed 16-bit mono
        PCM at `rate`, or an error (code `bad-audio` or `file-too-large`)
    {"type": "audio-encode", "data": {"format": "mp3", "rate": 24000, "final": bool}, payload: PCM}
        signed 16-bit mono PCM in; each is answered by one `audio-encoded` (payload: the encoded bytes the
        encoder has given so far, possibly none; final after the final piece)
"""

from __future__ import annotations

from dataclasses import dataclass

from wyoming.event import Event, Eventable

FILE_PIECE = 1 << 20
MAX_FILE_BYTES = 25 * 1024 * 1024  # OpenAI's limit for an uploaded file

_FILE, _ENCODE, _ENCODED = "audio-file", "audio-encode", "audio-encoded"


@dataclass
class AudioFile(Eventable):
    data: bytes
    final: bool = True
    rate: int = 16000

    @staticmethod
    def is_type(event_type: str) -> bool:
        return event_type == _FILE

    def event(self) -> Event:
        return Event(type=_FILE, data={"final": self.final, "rate": self.rate}, payload=self.data)

    @staticmethod
    def from_event(event: Event) -> "AudioFile":
        data = event.data or {}
        return AudioFile(event.payload or b"", bool(data.get("final", True)), int(data.get("rate", 16000)))


@dataclass
class AudioEncode(Eventable):
    data: bytes
    format: str
    rate: int
    final: bool = False

    @staticmethod
    def is_type(event_type: str) -> bool:
        return event_type == _ENCODE

    def event(self) -> Event:
        return Event(
            type=_ENCODE, data={"format": self.format, "rate": self.rate, "final": self.final}, payload=self.data
        )

    @staticmethod
    def from_event(event: Event) -> "AudioEncode":
        data = event.data or {}
        return AudioEncode(event.payload or b"", str(data["format"]), int(data["rate"]), bool(data.get("final", False)))


@dataclass
class AudioEncoded(Eventable):
    data: bytes
    final: bool = False

    @staticmethod
    def is_type(event_type: str) -> bool:
        return event_type == _ENCODED

    def event(self) -> Event:
        return Event(type=_ENCODED, data={"final": self.final}, payload=self.data)

    @staticmethod
    def from_event(event: Event) -> "AudioEncoded":
        return AudioEncoded(event.payload or b"", bool((event.data or {}).get("final", False)))
