"""`wyoming-qwen-client`: check a running server before adding it to Home Assistant.

It lists what a server offers, transcribes a WAV file or synthesizes text into one, and prints the
timings a user cares about. Only `wyoming` and the standard library are imported, so it starts fast
and runs on any machine, not just the one with the models.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import sys
import time
import wave
from typing import List, NamedTuple, Optional

from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

ASR_URI = "tcp://127.0.0.1:10300"
TTS_URI = "tcp://127.0.0.1:10200"
CHUNK_SECONDS = 0.1  # audio-chunk length when sending a WAV, as a microphone would
WORDS_PER_CHUNK = 3  # --stream sends the text a few words at a time, as an LLM writes it


class ClientError(Exception):
    """A failure explained in one line, printed without a traceback."""


class Wav(NamedTuple):
    rate: int
    width: int
    channels: int
    pcm: bytes

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (self.rate * self.width * self.channels)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe_format(rate: int, width: int, channels: int) -> str:
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels} channels")
    return f"{rate} Hz, {8 * width}-bit, {layout}"


class Connection:
    """One connection to a server; socket trouble and the server's `error` events become ClientError."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.doing = f"connecting to {uri}"  # named in the timeout message
        try:
            if not uri.startswith(("tcp://", "unix://")):
                raise ValueError("use tcp://HOST:PORT or unix://PATH")
            self._client = AsyncClient.from_uri(uri)
        except ValueError as err:
            raise ClientError(f"invalid --uri {uri!r}: {err}") from None

    async def __aenter__(self) -> Connection:
        progress(f"Connecting to {self.uri} ...")
        try:
            await self._client.connect()
        except OSError as err:
            if isinstance(err, ConnectionRefusedError):
                reason = "connection refused"
            elif isinstance(err, socket.gaierror):
                reason = f"unknown host: {err.strerror}"
            elif isinstance(err, FileNotFoundError):
                reason = "no such socket file"
            else:
                reason = err.strerror or str(err)
            raise ClientError(f"cannot connect to {self.uri} ({reason}); is the server running there?") from None
        return self

    async def __aexit__(self, *_exc) -> None:
        with contextlib.suppress(OSError):
            await self._client.disconnect()

    async def send(self, event: Event) -> None:
        try:
            await self._client.write_event(event)
        except OSError as err:
            raise ClientError(f"the server at {self.uri} closed the connection while {self.doing} ({err})") from None

    async def read(self, *types: str) -> Event:
        """The next event of one of `types`, skipping others."""
        while True:
            try:
                event = await self._client.read_event()
            except (OSError, asyncio.IncompleteReadError):
                event = None
            if event is None:
                raise ClientError(f"the server at {self.uri} closed the connection while {self.doing}")
            if Error.is_type(event.type):
                error = Error.from_event(event)
                raise ClientError(f"the server answered with an error ({error.code or 'no code'}): {error.text}")
            if event.type in types:
                return event

    async def describe(self) -> Info:
        self.doing = "waiting for its description (info)"
        await self.send(Describe().event())
        return Info.from_event(await self.read("info"))


def no_program(uri: str, kind: str, info: Info, port: int) -> ClientError:
    offered = [f"{k} {p.name}" for k in ("asr", "tts", "wake", "handle", "intent") for p in getattr(info, k)]
    name = {"asr": "speech-to-text (asr)", "tts": "text-to-speech (tts)"}[kind]
    return ClientError(
        f"the server at {uri} offers no {name} program (it offers: {', '.join(offered) or 'nothing'}); "
        f"is that the right port? (wyoming-qwen default: {port})"
    )


# -- describe -------------------------------------------------------------------------------------


def title(program) -> str:
    version = f" {program.version}" if program.version else ""
    return f"{program.name}{version}" + (f": {program.description}" if program.description else "")


async def describe(conn: Connection, _args) -> None:
    info = await conn.describe()
    for program in info.asr:
        print(f"speech-to-text program {title(program)}")
        print(f"  streaming transcripts: {'yes' if program.supports_transcript_streaming else 'no'}")
        for model in program.models:
            languages = ", ".join(model.languages) or "any"
            print(f"  model {model.name}: {len(model.languages)} languages: {languages}")
    for program in info.tts:
        print(f"text-to-speech program {title(program)}")
        print(f"  streaming synthesis: {'yes' if program.supports_synthesize_streaming else 'no'}")
        for voice in program.voices:
            print(f"  voice {voice.name} [{', '.join(voice.languages) or 'any language'}]: {voice.description or ''}")
    others = [f"{k} {p.name}" for k in ("wake", "handle", "intent", "mic", "snd") for p in getattr(info, k)]
    if others:
        print(f"other programs: {', '.join(others)}")
    if not (info.asr or info.tts or others):
        print("the server describes no programs")


# -- transcribe -----------------------------------------------------------------------------------


def read_wav(path: str) -> Wav:
    try:
        with wave.open(path, "rb") as wav:
            audio = Wav(wav.getframerate(), wav.getsampwidth(), wav.getnchannels(), wav.readframes(wav.getnframes()))
    except OSError as err:
        raise ClientError(f"cannot read WAV file {path}: {err.strerror or err}") from None
    except (EOFError, wave.Error) as err:
        raise ClientError(f"cannot read WAV file {path}: {err or 'truncated'} (a PCM .wav file is needed)") from None
    if not audio.pcm:
        raise ClientError(f"WAV file {path} holds no audio")
    return audio


async def send_audio(conn: Connection, wav: Wav, realtime: bool) -> float:
    """Send the audio and audio-stop; returns when audio-stop was sent (time.monotonic)."""
    step = max(1, int(wav.rate * CHUNK_SECONDS)) * wav.width * wav.channels
    bytes_per_second = wav.rate * wav.width * wav.channels
    started = time.monotonic()
    for offset in range(0, len(wav.pcm), step):
        piece = wav.pcm[offset : offset + step]
        if realtime:  # a microphone delivers each chunk once it has been spoken
            await asyncio.sleep(max(0.0, started + (offset + len(piece)) / bytes_per_second - time.monotonic()))
        await conn.send(AudioChunk(rate=wav.rate, width=wav.width, channels=wav.channels, audio=piece).event())
    await conn.send(AudioStop().event())
    stopped = time.monotonic()
    conn.doing = "waiting for the final transcript"
    progress("Audio sent (audio-stop); waiting for the final transcript ...")
    return stopped


async def transcribe(conn: Connection, args, wav: Wav) -> None:
    info = await conn.describe()
    if not info.asr:
        raise no_program(conn.uri, "asr", info, 10300)
    program = info.asr[0]
    progress(f"Server: {title(program)}")
    conn.doing = "sending audio"
    await conn.send(Transcribe(language=args.language).event())
    await conn.send(AudioStart(rate=wav.rate, width=wav.width, channels=wav.channels).event())
    pace = "as fast as possible" if args.fast else "in real time"
    progress(f"Sending {wav.seconds:.2f} s of audio ({describe_format(wav.rate, wav.width, wav.channels)}) {pace} ...")
    sender = asyncio.create_task(send_audio(conn, wav, realtime=not args.fast))
    text = ""
    try:
        while True:
            event = await conn.read("transcript-chunk", "transcript")
            if Transcript.is_type(event.type):
                break
            text += TranscriptChunk.from_event(event).text  # the chunks are pieces of one growing text
            print(f"partial: {text}", flush=True)
        received = time.monotonic()
        stopped = await sender
        transcript = Transcript.from_event(event)
        if program.supports_transcript_streaming:
            await conn.read("transcript-stop")
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    print(f"transcript: {transcript.text}")
    print(f"language: {transcript.language or 'not given by the server'}")
    print(f"latency: {received - stopped:.3f} s from the end of the audio (audio-stop) to the final transcript")


# -- synthesize -----------------------------------------------------------------------------------


def text_pieces(text: str) -> List[str]:
    words = re.findall(r"\S+\s*", text)
    return ["".join(words[i : i + WORDS_PER_CHUNK]) for i in range(0, len(words), WORDS_PER_CHUNK)]


async def synthesize(conn: Connection, args) -> None:
    info = await conn.describe()
    if not info.tts:
        raise no_program(conn.uri, "tts", info, 10200)
    program = info.tts[0]
    progress(f"Server: {title(program)}")
    if args.stream and not program.supports_synthesize_streaming:
        raise ClientError(f"{program.name} at {conn.uri} does not support streaming synthesis; leave out --stream")
    voice = SynthesizeVoice(name=args.voice, language=args.language) if args.voice or args.language else None
    conn.doing = "sending the text"
    started = time.monotonic()
    if args.stream:
        pieces = text_pieces(args.text)
        progress(f"Streaming the text in {len(pieces)} synthesize-chunk events ...")
        await conn.send(SynthesizeStart(voice=voice).event())
        for piece in pieces:
            await conn.send(SynthesizeChunk(text=piece).event())
        # as Home Assistant does: the whole text once more for servers that do not stream; streaming ones ignore it
        await conn.send(Synthesize(text=args.text, voice=voice).event())
        await conn.send(SynthesizeStop().event())
        end = "synthesize-stopped"
    else:
        progress("Sending one synthesize event ...")
        await conn.send(Synthesize(text=args.text, voice=voice).event())
        end = "audio-stop"
    conn.doing = "waiting for audio"
    progress("Waiting for audio ...")
    audio_format: Optional[tuple] = None
    first_audio: Optional[float] = None
    pcm = bytearray()
    while True:
        event = await conn.read("audio-start", "audio-chunk", end)
        if event.type == end:
            break
        if AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            audio_format = audio_format or (start.rate, start.width, start.channels)
            continue
        chunk = AudioChunk.from_event(event)
        if first_audio is None:
            first_audio = time.monotonic()
            conn.doing = "receiving audio"
        audio_format = audio_format or (chunk.rate, chunk.width, chunk.channels)
        pcm += chunk.audio
    finished = time.monotonic()
    if not pcm or audio_format is None:
        raise ClientError(f"the server at {conn.uri} sent no audio")
    rate, width, channels = audio_format
    try:
        with wave.open(args.output, "wb") as out:
            out.setnchannels(channels)
            out.setsampwidth(width)
            out.setframerate(rate)
            out.writeframes(bytes(pcm))
    except (OSError, wave.Error) as err:
        raise ClientError(f"cannot write {args.output}: {getattr(err, 'strerror', None) or err}") from None
    seconds = len(pcm) / (rate * width * channels)
    wall = finished - started
    print(f"wrote {args.output}: {seconds:.2f} s of audio ({describe_format(rate, width, channels)})")
    print(f"time to first audio: {first_audio - started:.3f} s after the request was sent")
    print(
        f"real-time factor: {wall / seconds:.2f} ({wall:.2f} s to synthesize {seconds:.2f} s of audio; "
        "below 1 means faster than real time, so playback need not wait)"
    )


# -- command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="Seconds the whole exchange may take (default: 60; transcribe adds the audio's duration in real time)",
    )
    parser = argparse.ArgumentParser(
        prog="wyoming-qwen-client",
        description="Check a wyoming-qwen server (or any Wyoming ASR/TTS server) before adding it to Home Assistant. "
        "Results go to stdout, progress to stderr; the exit status is 0 on success, 1 on any error.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub = commands.add_parser("describe", parents=[common], help="List the server's programs, models/voices, languages")
    sub.add_argument(
        "--uri", default=ASR_URI, help=f"Server address, tcp://HOST:PORT or unix://PATH (default: {ASR_URI})"
    )

    sub = commands.add_parser(
        "transcribe", parents=[common], help="Transcribe a WAV file, printing partial and final transcripts"
    )
    sub.add_argument("wav", metavar="FILE.wav", help="PCM WAV file of any rate, sample width and channel count")
    sub.add_argument("--uri", default=ASR_URI, help=f"ASR server address (default: {ASR_URI})")
    sub.add_argument("--language", help="Language code such as en or de (default: the server's choice)")
    sub.add_argument(
        "--fast", "--no-realtime", action="store_true", help="Send the audio as fast as possible, not in real time"
    )

    sub = commands.add_parser("synthesize", parents=[common], help="Synthesize text into a WAV file, with timings")
    sub.add_argument("text", help="Text to speak")
    sub.add_argument("--uri", default=TTS_URI, help=f"TTS server address (default: {TTS_URI})")
    sub.add_argument("--voice", help="Voice name, as `describe` lists them (default: the server's)")
    sub.add_argument("--language", help="Language code such as en (default: the voice's)")
    sub.add_argument(
        "--stream",
        action="store_true",
        help="Stream the text a few words at a time (synthesize-start/-chunk/-stop), as an LLM would",
    )
    sub.add_argument("-o", "--output", default="out.wav", help="WAV file to write (default: out.wav)")
    return parser


async def _run(args) -> None:
    wav = read_wav(args.wav) if args.command == "transcribe" else None  # a bad file fails before connecting
    conn = Connection(args.uri)
    timeout = args.timeout + (wav.seconds if wav is not None and not args.fast else 0.0)

    async def exchange() -> None:
        async with conn:
            if args.command == "describe":
                await describe(conn, args)
            elif args.command == "transcribe":
                await transcribe(conn, args, wav)
            else:
                await synthesize(conn, args)

    try:
        await asyncio.wait_for(exchange(), timeout)
    except asyncio.TimeoutError:
        raise ClientError(f"timed out after {timeout:g} s (--timeout) {conn.doing} at {conn.uri}") from None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    sys.stdout.reconfigure(errors="replace")  # a transcript in any script must not fail on a narrow console
    try:
        asyncio.run(_run(args))
    except ClientError as err:
        print(f"wyoming-qwen-client: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("wyoming-qwen-client: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader has what it wanted (`... | grep -q`, `| head`): no error to report
        _silence_stdout()
        return 0
    except Exception as err:  # still one line: the user checks a server, not this client's internals
        print(f"wyoming-qwen-client: error: unexpected {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def _silence_stdout() -> None:
    """Python flushes stdout once more at exit, which would raise into the pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def run(argv=None) -> None:
    code = main(argv)
    try:
        sys.stdout.flush()  # buffered output goes out now, while a broken pipe can still be answered
    except BrokenPipeError:
        _silence_stdout()
    sys.exit(code)


if __name__ == "__main__":
    run()
