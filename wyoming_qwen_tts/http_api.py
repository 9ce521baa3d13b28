"""The text-to-speech routes of the HTTP front (shared/http_front.py): OpenAI's speech endpoint, and the
voices. A request is the Wyoming conversation a Home Assistant client has with the worker (`synthesize`,
answered by `audio-start`, `audio-chunk`..., `audio-stop`), and the audio goes out as each chunk arrives:
the first bytes after the first sentence's first chunk. FLAC, MP3 and Opus are encoded by the worker over a
second conversation (`audio-encode`), chunk by chunk. Imported by the gateway with `--http`: nothing heavy.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import AsyncIterator, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.tts import Synthesize, SynthesizeVoice

from shared.codec_events import AudioEncode, AudioEncoded
from shared.http_front import ApiError, Conversation, HttpFront, StreamedBody

OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
# OpenAI's voice names, each mapped to one of the CustomVoice model's preset speakers (by the kind of voice
# OpenAI describes: female or male, brighter or deeper). A name of our own voices always wins.
OPENAI_VOICES = {
    "alloy": "vivian",
    "ash": "aiden",
    "ballad": "dylan",
    "coral": "serena",
    "echo": "ryan",
    "fable": "eric",
    "onyx": "uncle_fu",
    "nova": "sohee",
    "sage": "ono_anna",
    "shimmer": "serena",
    "verse": "aiden",
    "marin": "vivian",
    "cedar": "ryan",
}
CONTENT_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
}
ENCODED = ("flac", "mp3", "opus")


def served_models(args) -> list:
    """The model ids of the three voice kinds, as configured (hub ids or folders)."""
    from .info import choose_models

    return list(dict.fromkeys(choose_models(args).values()))


def routes(front: HttpFront) -> list:
    async def post(request: Request):
        return await speech(front, request)

    async def get(_request: Request) -> JSONResponse:
        return voices(front)

    return [Route("/v1/audio/speech", post, methods=["POST"]), Route("/v1/audio/voices", get)]


def _voice_names(front: HttpFront) -> list:
    return [voice.name for program in front.info().tts for voice in program.voices]


def voices(front: HttpFront) -> JSONResponse:
    """The voices `describe` lists, and which OpenAI names map to which of them."""
    listed = [
        {"id": voice.name, "name": voice.name, "description": voice.description, "languages": voice.languages}
        for program in front.info().tts
        for voice in program.voices
    ]
    names = {voice["name"] for voice in listed}
    aliases = {alias: name for alias, name in OPENAI_VOICES.items() if name in names}
    return JSONResponse({"voices": listed, "openai_voices": aliases})


def resolve_voice(front: HttpFront, requested: Optional[str]) -> Optional[str]:
    """Our voice of that name, else the preset an OpenAI name maps to; anything else goes to the worker,
    whose error lists the voices there are."""
    if not requested:
        return None
    names = _voice_names(front)
    if requested in names:
        return requested
    mapped = OPENAI_VOICES.get(requested.lower())
    return mapped if mapped in names else requested


async def speech(front: HttpFront, request: Request) -> StreamedBody:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"The body is not JSON ({err})", "invalid_json") from err
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object", "invalid_json")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "input is empty: send the text to speak", "empty_input", "input")
    front.check_model(body.get("model"))
    response_format = body.get("response_format") or "mp3"
    if response_format not in CONTENT_TYPES:
        raise ApiError(
            400,
            f"response_format {response_format!r} is not supported; use one of {', '.join(CONTENT_TYPES)}",
            "invalid_value",
            "response_format",
        )
    speed = body.get("speed")
    if speed is not None and speed != 1:
        raise ApiError(
            400, "speed is not supported: Qwen3-TTS has no speaking-rate control; send 1.0 or leave it out",
            "unsupported_value", "speed",
        )  # fmt: skip
    stream_format = body.get("stream_format") or "audio"
    if stream_format not in ("audio", "sse"):
        raise ApiError(400, "stream_format must be 'audio' or 'sse'", "invalid_value", "stream_format")
    voice = resolve_voice(front, body.get("voice"))
    synthesis = await front.conversation().open()
    encoding: Optional[Conversation] = None
    try:
        await synthesis.send(Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice else None).event())
        start = await _read_start(synthesis)  # errors (unknown voice, text too long) come before any audio
        if response_format in ENCODED:
            encoding = await front.conversation().open()
    except BaseException:
        synthesis.close()
        raise

    def close() -> None:
        synthesis.close()
        if encoding is not None:
            encoding.close()

    pieces = _audio(synthesis, encoding, start, response_format)
    if stream_format == "sse":
        pieces, media_type = _as_events(pieces), "text/event-stream"
    else:
        media_type = CONTENT_TYPES[response_format]
    return StreamedBody(pieces, media_type, front.args.write_timeout, close)


async def _read_start(conversation: Conversation) -> AudioStart:
    while True:
        event = await conversation.read()
        if AudioStart.is_type(event.type):
            return AudioStart.from_event(event)


async def _audio(
    synthesis: Conversation, encoding: Optional[Conversation], start: AudioStart, response_format: str
) -> AsyncIterator[bytes]:
    """The reply's audio in `response_format`, piece by piece as the worker speaks it."""
    if response_format == "wav":
        yield _streaming_wav_header(start.rate, start.width, start.channels)
    while True:
        event = await synthesis.read()
        if AudioChunk.is_type(event.type):
            pcm = AudioChunk.from_event(event).audio
            yield await _encode(encoding, response_format, start.rate, pcm, False) if encoding else pcm
        elif AudioStop.is_type(event.type):
            break
    if encoding is not None:
        yield await _encode(encoding, response_format, start.rate, b"", True)


async def _as_events(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`stream_format=sse`: each piece as a base64 `speech.audio.delta`, then `speech.audio.done`."""
    async for piece in pieces:
        if piece:
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()})
    yield _event({"type": "speech.audio.done"})


async def _encode(encoding: Conversation, response_format: str, rate: int, pcm: bytes, final: bool) -> bytes:
    await encoding.send(AudioEncode(pcm, response_format, rate, final).event())
    while True:
        event = await encoding.read()
        if AudioEncoded.is_type(event.type):
            return AudioEncoded.from_event(event).data


def _streaming_wav_header(rate: int, width: int, channels: int) -> bytes:
    """A WAV header whose sizes say 'unknown' (0xFFFFFFFF), as streaming WAV writers do: the length is not
    known when the first bytes go out."""
    unknown = 0xFFFFFFFF
    return (
        b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * width * channels, width * channels, 8 * width)
        + b"data" + struct.pack("<I", unknown)
    )  # fmt: skip


def _event(data: dict) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()
