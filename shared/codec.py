"""Compressed audio in and out, for the HTTP API: decoding an uploaded file to PCM, and encoding speech as it
is synthesized. In the worker process only (PyAV adds 17 MiB to a process; the gateway stays light), on a
thread of its own, never the inference thread.

PyAV (FFmpeg's libraries, shipped inside its wheels) reads every format OpenAI's transcription endpoint
takes (WAV, FLAC, OGG/Opus, MP3, WebM, M4A/MP4, MPEG) and writes FLAC, MP3 and Ogg/Opus.
"""

from __future__ import annotations

import io
from typing import List

ENCODED_FORMATS = {  # response_format: (container, codec, MIME type)
    "flac": ("flac", "flac", "audio/flac"),
    "mp3": ("mp3", "libmp3lame", "audio/mpeg"),
    "opus": ("ogg", "libopus", "audio/ogg"),
}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


class BadAudio(ValueError):
    """The bytes are not audio that can be decoded; the message says so in words a person can act on."""


def decode_to_pcm(data: bytes, rate: int) -> bytes:
    """Signed 16-bit mono PCM at `rate` of the first audio stream of a file in any format FFmpeg reads."""
    import av

    if not data:
        raise BadAudio("The file is empty")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise BadAudio("The file holds no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            pieces: List[bytes] = []
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pieces.append(_plane_bytes(out))
            for out in resampler.resample(None):
                pieces.append(_plane_bytes(out))
    except BadAudio:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as err:
        raise BadAudio(f"The file could not be decoded as audio ({err})") from err
    pcm = b"".join(pieces)
    if not pcm:
        raise BadAudio("The file holds no audio samples")
    return pcm


def _plane_bytes(frame) -> bytes:
    # a plane's buffer may be padded past the last sample
    return bytes(frame.planes[0])[: frame.samples * 2]


class StreamEncoder:
    """Signed 16-bit mono PCM at `rate` in, encoded bytes out as soon as the encoder gives them."""

    def __init__(self, response_format: str, rate: int) -> None:
        import av

        if response_format not in ENCODED_FORMATS:
            raise ValueError(f"unknown format {response_format!r}")
        container, codec, _mime = ENCODED_FORMATS[response_format]
        self._av = av
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=container)
        self._stream = self._container.add_stream(codec, rate=rate, layout="mono")
        self._rate = rate
        self._pts = 0

    def add(self, pcm: bytes) -> bytes:
        if pcm:
            frame = self._av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
            frame.planes[0].update(pcm)
            frame.sample_rate = self._rate
            frame.pts = self._pts
            self._pts += frame.samples
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()


class _Sink(io.RawIOBase):
    """A write-only file for PyAV's muxer that hands out what was written since the last `take`."""

    def __init__(self) -> None:
        super().__init__()
        self._pieces: List[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def seekable(self) -> bool:
        return False

    def take(self) -> bytes:
        data, self._pieces = b"".join(self._pieces), []
        return data
