"""The speech-to-text routes of the HTTP front (shared/http_front.py): OpenAI's transcription endpoint, and a
WebSocket for live audio. Each request is the Wyoming conversation a Home Assistant client has with the
worker: `transcribe`, `audio-start`, `audio-chunk`..., `audio-stop`, answered by `transcript-chunk`s (our
partial transcripts) and the `transcript`. An uploaded file is first decoded by the worker (`audio-file`).
Imported by the gateway with `--http`: nothing heavy here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator, List, Optional, Tuple

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop

from shared.codec_events import FILE_PIECE, AudioFile
from shared.http_front import ApiError, Conversation, HttpFront, StreamedBody

OPENAI_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
RATE = 16000
CHUNK_BYTES = 2 * RATE  # one second of audio an `audio-chunk`


def routes(front: HttpFront) -> list:
    async def post(request: Request) -> Response:
        return await transcriptions(front, request)

    async def websocket(ws: WebSocket) -> None:
        await live(front, ws)

    return [
        Route("/v1/audio/transcriptions", post, methods=["POST"]),
        WebSocketRoute("/v1/audio/transcriptions/live", websocket),
    ]


# -- POST /v1/audio/transcriptions -------------------------------------------------------------------------


async def transcriptions(front: HttpFront, request: Request) -> Response:
    async with request.form(max_files=1, max_fields=20) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "No audio file: send it as the multipart field 'file'", "missing_file", "file")
        data = await upload.read()
        fields = {name: _field(form, name) for name in ("model", "response_format", "stream", "language", "prompt")}
    if not data:
        raise ApiError(400, "The file is empty", "empty_file", "file")
    front.check_model(fields["model"])
    response_format = fields["response_format"] or "json"
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", "invalid_value", "response_format"
        )
    stream = (fields["stream"] or "false").lower() == "true"
    request_event = _transcribe(fields["language"], fields["prompt"], whole_file=True)
    conversation = await front.conversation().open()
    try:
        pcm = await decode_file(conversation, data)
        await send_utterance(conversation, request_event, pcm)
        if stream:
            body = StreamedBody(
                _streamed_transcript(conversation), "text/event-stream", front.args.write_timeout, conversation.close
            )
            conversation = None  # the body closes it
            return body
        text, language = await read_transcript(conversation)
    finally:
        if conversation is not None:
            conversation.close()
    return _formatted(response_format, text, language, len(pcm) / (2 * RATE))


def _field(form, name: str) -> Optional[str]:
    value = form.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _transcribe(language: Optional[str], prompt: Optional[str], whole_file: bool = False) -> Transcribe:
    """`prompt` becomes our context biasing (Qwen3-ASR reads it in its system turn). A whole file is never
    endpointed: a pause inside it ends nothing (`vad_endpointing` in the context, read by our handler)."""
    context = {"text": prompt} if prompt else {}
    if whole_file:
        context["vad_endpointing"] = False
    return Transcribe(language=language, context=context or None)


async def decode_file(conversation: Conversation, data: bytes) -> bytes:
    """The worker decodes the file: signed 16-bit mono PCM at 16 kHz."""
    for start in range(0, len(data), FILE_PIECE):
        final = start + FILE_PIECE >= len(data)
        await conversation.send(AudioFile(data[start : start + FILE_PIECE], final, RATE).event())
    pieces: List[bytes] = []
    while True:
        event = await conversation.read()
        if AudioChunk.is_type(event.type):
            pieces.append(AudioChunk.from_event(event).audio)
        elif AudioStop.is_type(event.type):
            return b"".join(pieces)


async def send_utterance(conversation: Conversation, request: Transcribe, pcm: bytes) -> None:
    await conversation.send(request.event())
    await conversation.send(AudioStart(rate=RATE, width=2, channels=1).event())
    for start in range(0, len(pcm), CHUNK_BYTES):
        await conversation.send(
            AudioChunk(rate=RATE, width=2, channels=1, audio=pcm[start : start + CHUNK_BYTES]).event()
        )
    await conversation.send(AudioStop().event())


async def read_transcript(conversation: Conversation) -> Tuple[str, Optional[str]]:
    text, language = "", None
    while True:
        event = await conversation.read()
        if Transcript.is_type(event.type):
            transcript = Transcript.from_event(event)
            text, language = transcript.text, transcript.language
        elif TranscriptStop.is_type(event.type):
            return text, language


async def _transcript_messages(conversation: Conversation) -> AsyncIterator[dict]:
    """The worker's transcript events in OpenAI's shape: a `transcript.text.delta` per partial transcript,
    then `transcript.text.done`; an `error` message ends them when the request fails."""
    done = {"type": "transcript.text.done", "text": "", "language": None}
    try:
        while True:
            event = await conversation.read()
            if TranscriptChunk.is_type(event.type):
                yield {"type": "transcript.text.delta", "delta": TranscriptChunk.from_event(event).text}
            elif Transcript.is_type(event.type):
                transcript = Transcript.from_event(event)
                done = {"type": "transcript.text.done", "text": transcript.text, "language": transcript.language}
            elif TranscriptStop.is_type(event.type):
                yield done
                return
    except ApiError as err:
        yield {"type": "error", "error": {"message": err.message, "code": err.code}}


async def _streamed_transcript(conversation: Conversation) -> AsyncIterator[bytes]:
    """Server-sent events: an error after the first byte is an `error` event."""
    async for message in _transcript_messages(conversation):
        yield _sse(message)


def _sse(data: dict) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _formatted(response_format: str, text: str, language: Optional[str], duration: float) -> Response:
    if response_format == "json":
        return JSONResponse({"text": text})
    if response_format == "text":
        return PlainTextResponse(text)
    if response_format == "verbose_json":
        segment = {
            "id": 0, "seek": 0, "start": 0.0, "end": round(duration, 3), "text": text, "tokens": [],
            "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0,
        }  # fmt: skip
        body = {"task": "transcribe", "language": language, "duration": round(duration, 3), "text": text}
        return JSONResponse({**body, "segments": [segment] if text else []})
    # one cue over the whole audio: the model gives no timestamps
    if response_format == "srt":
        body = f"1\n{_timestamp(0, ',')} --> {_timestamp(duration, ',')}\n{text}\n\n" if text else ""
        return PlainTextResponse(body, media_type="application/x-subrip")
    body = "WEBVTT\n\n" + (f"{_timestamp(0, '.')} --> {_timestamp(duration, '.')}\n{text}\n\n" if text else "")
    return PlainTextResponse(body, media_type="text/vtt")


def _timestamp(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}{separator}{millis % 1000:03d}"


# -- WebSocket /v1/audio/transcriptions/live ---------------------------------------------------------------


async def live(front: HttpFront, ws: WebSocket) -> None:
    """Live audio (a phone bridge, a browser): see the README's "OpenAI-compatible API" for the protocol."""
    await ws.accept()
    try:
        async with asyncio.timeout(front.args.request_timeout):
            settings = _live_settings(await ws.receive())
        async with front.conversation() as conversation:
            await conversation.send(_transcribe(settings["language"], settings["prompt"]).event())
            rate, width, channels = settings["rate"], settings["width"], settings["channels"]
            await conversation.send(AudioStart(rate=rate, width=width, channels=channels).event())
            relay = asyncio.create_task(_relay_transcripts(conversation, ws))
            try:
                while True:
                    message = await ws.receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    if message.get("bytes") is not None:
                        chunk = AudioChunk(rate=rate, width=width, channels=channels, audio=message["bytes"])
                        await conversation.send(chunk.event())
                    elif _is_stop(message.get("text")):
                        await conversation.send(AudioStop().event())
                        await relay
                        break
            finally:
                relay.cancel()
    except ApiError as err:
        await _ws_error(ws, err)
    except (TimeoutError, WebSocketDisconnect, RuntimeError):  # RuntimeError: the socket is already closed
        return
    await _close(ws)


def _live_settings(message: dict) -> dict:
    if message.get("text") is None:
        raise ApiError(400, 'Send a JSON message first: {"rate": 16000, "width": 2, "channels": 1}', "protocol")
    try:
        settings = json.loads(message["text"])
        return {
            "rate": int(settings.get("rate", RATE)),
            "width": int(settings.get("width", 2)),
            "channels": int(settings.get("channels", 1)),
            "language": settings.get("language") or None,
            "prompt": settings.get("prompt") or None,
        }
    except (ValueError, TypeError, AttributeError) as err:
        raise ApiError(400, f"The first message is not the JSON settings object ({err})", "protocol") from err


def _is_stop(data: Optional[str]) -> bool:
    try:
        return json.loads(data).get("type") == "stop"
    except (TypeError, ValueError, AttributeError):
        return False


async def _relay_transcripts(conversation: Conversation, ws: WebSocket) -> None:
    async for message in _transcript_messages(conversation):
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await ws.send_json(message)
    await _close(ws)  # after the client's stop, once the server's endpointing heard the end, or an error


async def _ws_error(ws: WebSocket, err: ApiError) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await ws.send_json({"type": "error", "error": {"message": err.message, "code": err.code}})


async def _close(ws: WebSocket) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await ws.close()
