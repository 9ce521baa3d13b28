"""The speech-to-text protocol of one connection: transcriptions streamed as they are spoken."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Optional

import numpy as np
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import (
    AudioChunk,
    AudioChunkConverter,
    AudioStart,
    AudioStop,
    audioop,  # the converter's own: audioop, or its pure-Python port on Python 3.13
)

from shared.handler import ServerEventHandler, handles
from shared.languages import ASR_LANGUAGES, UnsupportedLanguage

from .app import AsrApp
from .context import build_context
from .endpointing import SpeechGate, silence_for, silero_detector
from .model_io import MAX_CHANNELS, MAX_RATE, MIN_RATE, SAMPLE_RATE, WIDTHS, format_problem
from .session import StreamingSession

_LOGGER = logging.getLogger(__name__)

# What the handler does with audio events that belong to a request it already refused or dropped:
# the client gets one error, not one per chunk.
_TAKE = 0  # nothing dropped
_DROP_UTTERANCE = 1  # drop chunks and audio-stop until the next audio-start or transcribe
_DROP_REQUEST = 2  # a refused transcribe: also drop the audio-start of the utterance it announced
_ENDED = 3  # endpointing answered already: the rest of the utterance's audio and its audio-stop are ignored


class AsrEventHandler(ServerEventHandler):
    app: AsrApp

    def __init__(self, reader, writer, app: AsrApp) -> None:
        super().__init__(reader, writer, app)
        self._request = Transcribe()
        self._session: Optional[StreamingSession] = None
        self._gate: Optional[SpeechGate] = None  # what of the utterance reaches the model (endpointing.py)
        self._vad = None  # this connection's detector: its model is read once, its state reset per utterance
        self._samples = 0  # of the utterance as sent
        self._pause_decoded = False  # endpointing: the current pause's audio is being decoded already
        self._hold: Optional[contextlib.AsyncExitStack] = None
        self._format: Optional[tuple] = None
        self._converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)
        self._language: Optional[str] = None
        self._started_sent = False
        self._dropping = _TAKE
        limit = app.max_utterance_seconds
        self._max_samples = int(limit * SAMPLE_RATE)

    async def disconnect(self) -> None:
        if self._session is not None:
            _LOGGER.debug("Client left mid-utterance; dropping its session")
        await self._end_session(cancel=True)

    # -- events ---------------------------------------------------------------------------------

    @handles(Transcribe)
    async def _on_transcribe(self, request: Transcribe) -> None:
        self._dropping = _TAKE
        if self._session is not None:
            await self._drop(
                "transcribe arrived during an utterance; the utterance was dropped. Send transcribe before audio-start",
                "protocol",
            )
        self._request = request
        try:
            self._language = ASR_LANGUAGES.to_qwen_name(request.language) or self.app.default_language
        except UnsupportedLanguage as err:
            self._request = Transcribe()
            self._language = None
            self._dropping = _DROP_REQUEST
            await self.error(f"{err}; the utterance of this request is ignored", "unsupported-language")

    @handles(AudioStart)
    async def _on_audio_start(self, start: AudioStart) -> None:
        if self._session is not None:
            await self._drop("audio-start arrived during a transcription; the old one was dropped", "protocol")
        if self._dropping == _DROP_REQUEST:
            self._dropping = _DROP_UTTERANCE
            return
        self._dropping = _TAKE
        problem = format_problem(start.rate, start.width, start.channels)
        if problem:
            await self._drop(
                f"audio-start format not supported: {problem}. Send PCM at {MIN_RATE}..{MAX_RATE} Hz, "
                f"{'/'.join(map(str, WIDTHS))} bytes per sample, 1..{MAX_CHANNELS} channels "
                "(16000 Hz, 2 bytes, 1 channel needs no conversion)",
                "audio-format",
            )
            return
        self._format = (start.rate, start.width, start.channels)
        if self._language is None:
            self._language = self.app.default_language
        context = build_context(
            self.app.context,
            self._request.context,
            self._request.transcript_names,
            self._request.transcript_terms,
        )
        endpointing = self.app.vad_endpointing
        if isinstance(self._request.context, dict) and self._request.context.get("vad_endpointing") is False:
            endpointing = None  # the HTTP front's uploaded files: a pause inside a file ends nothing
        self._gate = SpeechGate(await self._detector(), silence_for(endpointing, self._request.vad_sensitivity))
        self._samples = 0
        self._hold = contextlib.AsyncExitStack()
        handle = await self._hold.enter_async_context(self.app.manager.use(self.app.model_key))
        self._started_sent = False
        self._session = StreamingSession(
            handle,
            context=context,
            language=self._language,
            chunk_seconds=self.app.chunk_seconds,
            on_text=self._send_piece,
        )
        _LOGGER.debug("Transcription started: %s, language=%s", self._format, self._language)

    @handles(AudioChunk)
    async def _on_audio_chunk(self, chunk: AudioChunk) -> None:
        if self._session is None:
            if self._dropping == _TAKE:
                self._dropping = _DROP_UTTERANCE
                await self.error(
                    "audio-chunk arrived before audio-start: send transcribe (optional), audio-start, "
                    "then audio-chunk events; audio up to the next audio-start is ignored",
                    "protocol",
                )
            return
        if (chunk.rate, chunk.width, chunk.channels) != self._format:
            announced = self._format
            await self._drop(
                f"audio-chunk format {chunk.rate} Hz/{chunk.width} bytes/{chunk.channels} ch differs "
                f"from audio-start's {announced[0]} Hz/{announced[1]} bytes/{announced[2]} ch; "
                "the transcription was dropped",
                "audio-format",
            )
            return
        if len(chunk.audio) % (chunk.width * chunk.channels):
            await self._drop(
                f"audio-chunk of {len(chunk.audio)} bytes holds a partial sample frame "
                f"({chunk.width} bytes x {chunk.channels} ch each); the transcription was dropped",
                "audio-format",
            )
            return
        if not chunk.audio:
            return
        pcm = self._converter.convert(_downmix(chunk) if chunk.channels > 2 else chunk).audio
        self._samples += len(pcm) // 2
        if self._samples > self._max_samples:
            limit = self._max_samples / SAMPLE_RATE
            await self._drop(
                f"The utterance is longer than {limit:g} s, the server's limit; it was dropped. Send shorter "
                f"utterances, or raise the limit with --max-utterance-seconds",
                "utterance-too-long",
            )
            return
        gate = self._gate
        heard = await asyncio.to_thread(gate.push, pcm)  # the detector runs off the event loop
        if self._session is None:  # dropped meanwhile
            return
        if heard:
            self._session.add_audio(heard)
        if gate.in_pause and gate.silence_windows is not None and not self._pause_decoded:
            self._pause_decoded = True  # decode now: when the pause is the end, this is the final decode
            self._session.step_now()
        elif not gate.in_pause:
            self._pause_decoded = False
        if gate.done:
            _LOGGER.debug("Endpointing: %s", "end of speech" if gate.ended else "no speech")
            await self._finish(time.monotonic())
            self._dropping = _ENDED

    @handles(AudioStop)
    async def _on_audio_stop(self, _stop: AudioStop) -> None:
        if self._session is None:
            if self._dropping == _TAKE:
                await self.error("audio-stop arrived without audio-start", "protocol")
            self._dropping = _TAKE
            return
        started = time.monotonic()
        tail = await asyncio.to_thread(self._gate.flush)
        if self._session is None:
            return
        if tail:
            self._session.add_audio(tail)
        await self._finish(started)

    async def _finish(self, started: float) -> None:
        """The transcript of the utterance so far: decoded, or empty at once when nobody spoke."""
        session = self._session
        if not self._gate.heard_speech:
            language = ASR_LANGUAGES.to_code(self._language)
            await self._end_session(cancel=True)
            await self.write_event(TranscriptStart(language=language).event())
            await self.write_event(Transcript(text="", language=language).event())
            await self.write_event(TranscriptStop().event())
            _LOGGER.info("No speech in %.2f s of audio: an empty transcript, no decode", self._samples / SAMPLE_RATE)
            return
        try:
            result = await session.finish()
        except Exception as err:  # the model failed: tell the client, keep serving
            _LOGGER.exception("Transcription failed")
            await self._end_session(cancel=True)
            await self.error(f"Transcription failed: {err}", "transcription-failed")
            return
        language = ASR_LANGUAGES.to_code(result.language)
        sent = session.sent_text
        if not result.text.startswith(sent):  # cannot happen by construction; never lose text
            _LOGGER.warning("Final transcript does not extend the streamed text: %r vs %r", result.text, sent)
        rest = result.text[len(sent) :] if result.text.startswith(sent) else ""
        if rest:
            await self._send_piece(result.language, rest)
        if not self._started_sent:
            await self.write_event(TranscriptStart(language=language).event())
        final_text = sent + rest if result.text.startswith(sent) else result.text
        await self.write_event(Transcript(text=final_text, language=language).event())
        await self.write_event(TranscriptStop().event())
        _LOGGER.info(
            "Transcribed %.2f s of audio (%.2f s of it decoded): %d chars, language %s, %.3f s after the end",
            self._samples / SAMPLE_RATE,
            session.samples / SAMPLE_RATE,
            len(final_text),
            language,
            time.monotonic() - started,
        )
        _LOGGER.debug("Transcript: %s", final_text)
        await self._end_session(cancel=False)

    # -- helpers --------------------------------------------------------------------------------

    async def _detector(self):
        """The connection's voice-activity detector, fresh for a new utterance; None with `--vad off`."""
        if not self.app.vad:
            return None
        if self._vad is None:
            self._vad = await asyncio.to_thread(silero_detector)
        else:
            self._vad.reset()
        return self._vad

    async def _send_piece(self, language_name: Optional[str], piece: str) -> None:
        if not self._started_sent:
            self._started_sent = True
            await self.write_event(
                TranscriptStart(language=ASR_LANGUAGES.to_code(language_name or self._language)).event()
            )
        await self.write_event(TranscriptChunk(text=piece).event())

    async def _drop(self, text: str, code: str) -> None:
        """Refuse the current utterance: its session and audio go at once, the rest of it is ignored."""
        await self._end_session(cancel=True)
        self._dropping = _DROP_UTTERANCE
        await self.error(text, code)

    async def _end_session(self, cancel: bool) -> None:
        session, self._session = self._session, None
        self._gate = None
        if session is not None and cancel:
            await session.cancel()
        hold, self._hold = self._hold, None
        if hold is not None:
            await hold.aclose()
        self._request = Transcribe()
        self._language = None
        self._format = None
        self._converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)


def _downmix(chunk: AudioChunk) -> AudioChunk:
    """Mix more than two channels to mono: `AudioChunkConverter` only mixes stereo."""
    pcm = chunk.audio
    if chunk.width == 1:
        pcm = audioop.bias(pcm, 1, -128)  # 8-bit audio is unsigned
    frames = np.frombuffer(audioop.lin2lin(pcm, chunk.width, 4), dtype=np.int32).reshape(-1, chunk.channels)
    mono = frames.mean(axis=1).astype(np.int32)
    return AudioChunk(rate=chunk.rate, width=4, channels=1, audio=mono.tobytes(), timestamp=chunk.timestamp)
