"""Soak: many mixed requests, bad inputs among them, against one ASR and one TTS server process each.

Each server is a real gateway process with its worker (tiny random checkpoints by default), started
with an --idle-unload far beyond the run, so the same worker is measured from start to end. The mix is
seeded: every third request is a bad input (its kinds in a shuffled round, so a round of 20 covers all
of them), the others are real requests (ASR, TTS, streamed TTS, describe) chosen at random. Bad
frames are written with plain asyncio connections, never the `wyoming` client.

Every bad input has an expected outcome: an `error` event with the connection kept open (then a
`describe` on it must still be answered), an `error` and/or the connection closed (a frame that
cannot be read), or, for a request that is odd but valid (empty text, control characters, emoji),
audio or an error. Waiting more than 5 s for a frame-level answer is a hang.

Printed: the gateway's and the worker's resident memory (VmRSS) at request 100 and at the last request
for both servers, their growth, and the outcomes per request kind.

    script/bench soak [--requests 1000] [--seed 0] [--tiny-dir DIR]

Exit status 1 when a real request failed, a bad input got an unexpected outcome, a worker was
restarted, or a server no longer serves at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tiny_models  # noqa: E402  (sets the offline environment)
from wyoming_helpers import children, rss_kib, spawn_server, speechlike, stop_server  # noqa: E402

IDLE_UNLOAD = 10**6  # seconds: the worker must not be stopped during the run
MEMORY_AT = 100  # request after which memory is first measured (scaled down for short runs)
GROWTH_TARGET_PCT = 5.0
FRAME_TIMEOUT = 5.0  # seconds an answer to a bad frame may take; longer is a hang
REQUEST_TIMEOUT = 180.0  # a real request (the first one loads a model)
BAD_EVERY = 3  # every third request is a bad input

# outcomes
OK, ERROR, ERROR_CLOSED, CLOSED, HANG, ABANDONED, FAILED = (
    "ok",
    "error",
    "error+closed",
    "closed",
    "hang",
    "abandoned",
    "failed",
)
FRAME_LEVEL = {ERROR, ERROR_CLOSED, CLOSED}  # a frame that cannot be read: an error and/or closed


# -- servers ----------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: asyncio.subprocess.Process
    uri: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker(self) -> Optional[int]:
        kids = children(self.pid)
        return kids[0] if len(kids) == 1 else None


async def start_server(name: str, module: str, args: List[str], workdir: Path) -> Server:
    uri = f"unix://{workdir}/{name}.sock"
    log_path = workdir / f"{name}.log"
    process = await spawn_server(module, uri, log_path, "--idle-unload", str(IDLE_UNLOAD), *args)
    return Server(name, process, uri, log_path)


# -- raw connections ----------------------------------------------------------------------------------


def frame(event_type: str, data: Optional[dict] = None, payload: bytes = b"") -> bytes:
    """One Wyoming frame, as bytes: header line, data, payload."""
    data_bytes = json.dumps(data).encode() if data else b""
    header = {"type": event_type, "version": "1.5.0"}
    if data_bytes:
        header["data_length"] = len(data_bytes)
    if payload:
        header["payload_length"] = len(payload)
    return json.dumps(header).encode() + b"\n" + data_bytes + payload


async def open_raw(uri: str) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if uri.startswith("unix://"):
        return await asyncio.open_unix_connection(uri[len("unix://") :])
    host, port = uri[len("tcp://") :].rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def close_raw(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (OSError, asyncio.TimeoutError):
        pass


async def read_raw(reader):
    """The next event, or None once the server closed."""
    from wyoming.event import async_read_event

    try:
        return await async_read_event(reader)
    except (ConnectionError, asyncio.IncompleteReadError):
        return None


async def answer(reader, writer, timeout: float, ends: Tuple[str, ...] = ()) -> str:
    """What the server made of a bad input: ERROR (the connection then still answers `describe`),
    ERROR_CLOSED, CLOSED, OK (one of `ends` arrived), or HANG (nothing within `timeout`)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = await read_raw(reader)
                if event is None:
                    return CLOSED
                if event.type in ends:
                    return OK
                if event.type == "error":
                    break
    except TimeoutError:
        return HANG
    try:  # still open? it must answer describe
        writer.write(frame("describe"))
        await writer.drain()
        async with asyncio.timeout(FRAME_TIMEOUT):
            while True:
                event = await read_raw(reader)
                if event is None:
                    return ERROR_CLOSED
                if event.type == "info":
                    return ERROR
    except (ConnectionError, OSError):
        return ERROR_CLOSED
    except TimeoutError:
        return HANG


# -- bad inputs -----------------------------------------------------------------------------------------
# each: (name, target server, expected outcomes, coroutine(uri) -> outcome)

ASR_FORMAT = {"rate": 16000, "width": 2, "channels": 1}


async def bad_not_json(uri):
    reader, writer = await open_raw(uri)
    writer.write(b"this is not json {\n")
    await writer.drain()
    try:
        return await answer(reader, writer, FRAME_TIMEOUT)
    finally:
        await close_raw(writer)


async def bad_not_object(uri):
    reader, writer = await open_raw(uri)
    writer.write(b'["audio-start", {"rate": 16000}]\n')
    await writer.drain()
    try:
        return await answer(reader, writer, FRAME_TIMEOUT)
    finally:
        await close_raw(writer)


async def bad_short_payload(uri):
    """A frame announcing 3200 bytes of payload, 100 sent, then the client half-closes."""
    reader, writer = await open_raw(uri)
    whole = frame("audio-chunk", ASR_FORMAT, b"\x01\x00" * 1600)
    writer.write(whole[: len(whole) - 3100])
    await writer.drain()
    writer.write_eof()
    try:
        return await answer(reader, writer, FRAME_TIMEOUT)
    finally:
        await close_raw(writer)


async def bad_huge_data_length(uri):
    """A header announcing 10**12 bytes of data (a few bytes follow; the client keeps the connection)."""
    reader, writer = await open_raw(uri)
    header = {"type": "transcribe", "version": "1.5.0", "data_length": 10**12}
    writer.write(json.dumps(header).encode() + b"\n" + b'{"language": "en"')
    await writer.drain()
    try:
        return await answer(reader, writer, FRAME_TIMEOUT)
    finally:
        await close_raw(writer)


async def bad_chunk_before_start(uri):
    reader, writer = await open_raw(uri)
    writer.write(frame("audio-chunk", ASR_FORMAT, speechlike(0.1, seed=1)))
    await writer.drain()
    try:
        return await answer(reader, writer, FRAME_TIMEOUT)
    finally:
        await close_raw(writer)


async def bad_chunk_format(uri):
    reader, writer = await open_raw(uri)
    writer.write(frame("transcribe", {"language": "en"}))
    writer.write(frame("audio-start", ASR_FORMAT))
    writer.write(frame("audio-chunk", ASR_FORMAT, speechlike(0.1, seed=2)))
    writer.write(frame("audio-chunk", {"rate": 8000, "width": 2, "channels": 1}, speechlike(0.1, rate=8000)))
    await writer.drain()
    try:
        return await answer(reader, writer, FRAME_TIMEOUT)
    finally:
        await close_raw(writer)


async def bad_odd_length(uri):
    reader, writer = await open_raw(uri)
    writer.write(frame("audio-start", ASR_FORMAT))
    writer.write(frame("audio-chunk", ASR_FORMAT, speechlike(0.1, seed=3)[:-1]))  # 3199 bytes of 16-bit audio
    await writer.drain()
    try:
        return await answer(reader, writer, FRAME_TIMEOUT)
    finally:
        await close_raw(writer)


async def bad_asr_disconnect(uri):
    """Half an utterance, then the client is gone."""
    reader, writer = await open_raw(uri)
    writer.write(frame("transcribe", {"language": "en"}))
    writer.write(frame("audio-start", ASR_FORMAT))
    pcm = speechlike(1.0, seed=4)
    for i in range(0, len(pcm), 3200):
        writer.write(frame("audio-chunk", ASR_FORMAT, pcm[i : i + 3200]))
    await writer.drain()
    await close_raw(writer)
    return ABANDONED


def synthesize_frame(text: str, voice: Optional[str] = None) -> bytes:
    data: Dict = {"text": text}
    if voice is not None:
        data["voice"] = {"name": voice}
    return frame("synthesize", data)


async def tts_text(uri, text: str, voice: Optional[str] = None, timeout: float = REQUEST_TIMEOUT) -> str:
    reader, writer = await open_raw(uri)
    writer.write(synthesize_frame(text, voice))
    await writer.drain()
    try:
        return await answer(reader, writer, timeout, ends=("audio-stop",))
    finally:
        await close_raw(writer)


async def bad_empty_text(uri):
    return await tts_text(uri, "")


async def bad_long_text(uri):
    return await tts_text(uri, "Hello there. " * 7692 + "Bye", timeout=30)  # 100,000 characters


async def bad_control_chars(uri):
    return await tts_text(uri, "Hi\x00\x07\x1b\x7f\u202e.")


async def bad_emoji(uri):
    return await tts_text(uri, "\U0001f600\U0001f389")


async def bad_unknown_voice(uri):
    return await tts_text(uri, "Hi.", voice="no-such-voice", timeout=30)


async def bad_path_voice(uri):
    return await tts_text(uri, "Hi.", voice="../../etc/passwd", timeout=30)


async def bad_chunk_without_start(uri):
    reader, writer = await open_raw(uri)
    writer.write(frame("synthesize-chunk", {"text": "Hello there. "}))
    await writer.drain()
    try:
        return await answer(reader, writer, FRAME_TIMEOUT)
    finally:
        await close_raw(writer)


async def bad_tts_disconnect(uri):
    """A reply starts, then the client is gone."""
    reader, writer = await open_raw(uri)
    writer.write(synthesize_frame("Hello there, this is a longer sentence."))
    await writer.drain()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            while True:
                event = await read_raw(reader)
                if event is None:
                    return CLOSED
                if event.type == "error":
                    return ERROR
                if event.type == "audio-chunk":
                    return ABANDONED
    except TimeoutError:
        return HANG
    finally:
        await close_raw(writer)


BAD_INPUTS: List[Tuple[str, str, set, Callable]] = [
    ("not-json-header", "asr", FRAME_LEVEL, bad_not_json),
    ("not-json-header", "tts", FRAME_LEVEL, bad_not_json),
    ("header-not-object", "asr", FRAME_LEVEL, bad_not_object),
    ("header-not-object", "tts", FRAME_LEVEL, bad_not_object),
    ("short-payload-then-close", "asr", FRAME_LEVEL, bad_short_payload),
    ("short-payload-then-close", "tts", FRAME_LEVEL, bad_short_payload),
    ("data-length-10**12", "asr", FRAME_LEVEL, bad_huge_data_length),
    ("data-length-10**12", "tts", FRAME_LEVEL, bad_huge_data_length),
    ("chunk-before-audio-start", "asr", {ERROR}, bad_chunk_before_start),
    ("chunk-in-other-format", "asr", {ERROR}, bad_chunk_format),
    ("odd-length-16-bit", "asr", {ERROR}, bad_odd_length),
    ("disconnect-mid-utterance", "asr", {ABANDONED}, bad_asr_disconnect),
    ("empty-text", "tts", {OK, ERROR}, bad_empty_text),
    ("100000-characters", "tts", {ERROR}, bad_long_text),
    ("control-characters", "tts", {OK, ERROR}, bad_control_chars),
    ("emoji", "tts", {OK, ERROR}, bad_emoji),
    ("unknown-voice", "tts", {ERROR}, bad_unknown_voice),
    ("voice-../../etc/passwd", "tts", {ERROR}, bad_path_voice),
    ("synthesize-chunk-without-start", "tts", {ERROR}, bad_chunk_without_start),
    ("disconnect-mid-reply", "tts", {ABANDONED}, bad_tts_disconnect),
]

# -- real requests ----------------------------------------------------------------------------------------

TTS_TEXTS = ["Hi.", "Yes.", "Ok.", "No.", "Go."]  # short: random weights run to the cap (3 frames a character + 12)


async def real_asr(uri, rng: random.Random) -> str:
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncClient

    pcm = speechlike(rng.choice([0.5, 0.8, 1.0, 1.5]), seed=rng.randrange(1000))
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(**ASR_FORMAT).event())
        for i in range(0, len(pcm), 3200):
            await client.write_event(AudioChunk(**ASR_FORMAT, audio=pcm[i : i + 3200]).event())
        await client.write_event(AudioStop().event())
        types = await read_types(client, "transcript-stop")
    if not re.fullmatch(r"(transcript-start )?(transcript-chunk )*transcript transcript-stop", " ".join(types)):
        raise AssertionError(f"events {types}")
    return OK


async def real_tts(uri, rng: random.Random, stream: bool) -> str:
    from wyoming.client import AsyncClient
    from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

    text = rng.choice(TTS_TEXTS)
    async with AsyncClient.from_uri(uri) as client:
        if stream:
            await client.write_event(SynthesizeStart().event())
            for word in re.findall(r"\S+\s*", text):
                await client.write_event(SynthesizeChunk(text=word).event())
            await client.write_event(SynthesizeStop().event())
            types = await read_types(client, "synthesize-stopped")
        else:
            await client.write_event(Synthesize(text=text).event())
            types = await read_types(client, "audio-stop")
    expected = r"audio-start (audio-chunk )+audio-stop" + (" synthesize-stopped" if stream else "")
    if not re.fullmatch(expected, " ".join(types)):
        raise AssertionError(f"events {types[:3]}...{types[-3:]}")
    return OK


async def real_describe(uri, _rng) -> str:
    from wyoming.client import AsyncClient
    from wyoming.info import Describe

    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Describe().event())
        await read_types(client, "info")
    return OK


async def read_types(client, last: str) -> List[str]:
    types: List[str] = []
    async with asyncio.timeout(REQUEST_TIMEOUT):
        while True:
            event = await client.read_event()
            if event is None:
                raise ConnectionError(f"closed after {types}")
            types.append(event.type)
            if event.type == "error":
                raise AssertionError(f"error: {event.data.get('code')}: {event.data.get('text')}")
            if event.type == last:
                return types


REAL_KINDS = [  # (kind, server, weight)
    ("asr", "asr", 4),
    ("tts", "tts", 3),
    ("tts-stream", "tts", 2),
    ("describe", "asr", 1),
    ("describe", "tts", 1),
]


async def run_real(kind: str, uri: str, rng: random.Random) -> str:
    if kind == "asr":
        return await real_asr(uri, rng)
    if kind.startswith("describe"):
        return await real_describe(uri, rng)
    return await real_tts(uri, rng, stream=kind == "tts-stream")


# -- the soak -----------------------------------------------------------------------------------------------


@dataclass
class Memory:
    gateway_kib: int
    worker_kib: int
    worker_pid: Optional[int]


@dataclass
class Report:
    requests: int
    seconds: float = 0.0
    outcomes: Dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    real_failures: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)  # bad inputs with an outcome not expected
    bad_seen: Dict[str, set] = field(default_factory=lambda: collections.defaultdict(set))  # name -> outcomes
    memory_at: int = 0
    memory: Dict[str, Dict[str, Memory]] = field(default_factory=dict)  # server -> {"first", "last"}
    final_check: Dict[str, str] = field(default_factory=dict)  # server -> "ok" or the failure

    def growth_pct(self, server: str, process: str) -> float:
        first, last = self.memory[server]["first"], self.memory[server]["last"]
        before, after = getattr(first, f"{process}_kib"), getattr(last, f"{process}_kib")
        return 100.0 * (after - before) / before

    @property
    def workers_kept(self) -> bool:
        return all(
            m["first"].worker_pid is not None and m["first"].worker_pid == m["last"].worker_pid
            for m in self.memory.values()
        )

    @property
    def passed(self) -> bool:
        return (
            not self.real_failures
            and not self.unexpected
            and self.workers_kept
            and all(v == OK for v in self.final_check.values())
        )


def schedule(requests: int, seed: int) -> List[Tuple[str, str, Optional[tuple]]]:
    """(kind, server, bad input or None) per request; every BAD_EVERY-th is bad, the first two are real."""
    rng = random.Random(seed)
    kinds, weights = [(k, s) for k, s, _ in REAL_KINDS], [w for *_, w in REAL_KINDS]
    plan: List[Tuple[str, str, Optional[tuple]]] = [("asr", "asr", None), ("tts", "tts", None)]
    bad_round: List[tuple] = []
    while len(plan) < requests:
        if len(plan) % BAD_EVERY == BAD_EVERY - 1:
            if not bad_round:
                bad_round = list(BAD_INPUTS)
                rng.shuffle(bad_round)
            bad = bad_round.pop()
            plan.append((f"bad:{bad[0]}@{bad[1]}", bad[1], bad))
        else:
            kind, server = rng.choices(kinds, weights)[0]
            plan.append((kind if kind != "describe" else f"describe@{server}", server, None))
    return plan[:requests]


def measure(server: Server) -> Memory:
    worker = server.worker()
    return Memory(rss_kib(server.pid) or 0, (rss_kib(worker) or 0) if worker else 0, worker)


async def soak(
    requests: int = 1000,
    seed: int = 0,
    tiny_dir: Optional[str] = None,
    workdir: Optional[Path] = None,
    log: Callable[[str], None] = print,
    progress_every: int = 100,
    verbose: bool = False,
) -> Report:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="bench-soak-"))
    tiny = tiny_models.prebuilt_or_build(workdir / "tiny", tiny_dir)
    report = Report(requests=requests)
    report.memory_at = MEMORY_AT if requests >= 2 * MEMORY_AT else max(2, requests // 5)
    servers: Dict[str, Server] = {}
    try:
        servers["asr"] = await start_server(
            "asr", "wyoming_qwen_asr", ["--model", str(tiny / "asr"), "--chunk-seconds", "0.5"], workdir
        )
        servers["tts"] = await start_server(
            "tts",
            "wyoming_qwen_tts",
            [
                "--model",
                str(tiny / "tts-custom-voice"),
                "--clone-model",
                str(tiny / "tts-base"),
                "--design-model",
                str(tiny / "tts-voice-design"),
            ],
            workdir,
        )
        log(f"servers: ASR pid {servers['asr'].pid}, TTS pid {servers['tts'].pid} (tiny checkpoints in {tiny})")
        rng = random.Random(seed + 1)
        # warm-up, not counted: both workers start and load their models at once
        await asyncio.gather(real_asr(servers["asr"].uri, rng), real_tts(servers["tts"].uri, rng, stream=False))
        started = time.monotonic()
        for index, (kind, server_name, bad) in enumerate(schedule(requests, seed), start=1):
            uri = servers[server_name].uri
            request_started = time.monotonic()
            if bad is None:
                try:
                    outcome = await run_real(kind, uri, rng)
                except Exception as err:
                    outcome = FAILED
                    report.real_failures.append(f"request {index} ({kind}): {type(err).__name__}: {err}")
            else:
                name, _server, expected, run = bad
                try:
                    outcome = await run(uri)
                except Exception as err:
                    outcome = f"raised {type(err).__name__}"
                report.bad_seen[f"{name}@{server_name}"].add(outcome)
                if outcome not in expected:
                    report.unexpected.append(
                        f"request {index} ({kind}): {outcome}, expected {' or '.join(sorted(expected))}"
                    )
            report.outcomes[kind][outcome] += 1
            if verbose:
                log(f"  request {index:4d} {kind:45s} {outcome:12s} {time.monotonic() - request_started:6.2f} s")
            if index == report.memory_at:
                report.memory = {name: {"first": measure(s)} for name, s in servers.items()}
            if progress_every and index % progress_every == 0:
                log(f"  {index}/{requests} requests, {time.monotonic() - started:.0f} s")
        for name, server in servers.items():
            report.memory.setdefault(name, {"first": measure(server)})["last"] = measure(server)
        report.seconds = time.monotonic() - started
        for name, server in servers.items():  # both still serve
            kind = "asr" if name == "asr" else "tts"
            try:
                await real_describe(server.uri, rng)
                report.final_check[name] = await run_real(kind, server.uri, rng)
            except Exception as err:
                report.final_check[name] = f"{type(err).__name__}: {err}"
    finally:
        for server in servers.values():
            await stop_server(server.process)
    print_report(report, servers, log)
    return report


def print_report(report: Report, servers: Dict[str, Server], log: Callable[[str], None]) -> None:
    first, last = report.memory_at, report.requests
    log(f"\n{report.requests} requests in {report.seconds:.0f} s")
    for name in ("asr", "tts"):
        if name not in report.memory or "last" not in report.memory[name]:
            continue
        a, b = report.memory[name]["first"], report.memory[name]["last"]
        label = "speech-to-text" if name == "asr" else "text-to-speech"
        same = "same worker" if a.worker_pid == b.worker_pid else f"WORKER CHANGED {a.worker_pid} -> {b.worker_pid}"
        log(f"{label} ({same}):")
        for process in ("gateway", "worker"):
            before, after = getattr(a, f"{process}_kib") / 1024, getattr(b, f"{process}_kib") / 1024
            log(
                f"  {process} RSS at request {first}: {before:7.1f} MiB, at request {last}: {after:7.1f} MiB, "
                f"growth {report.growth_pct(name, process):+.1f}%"
            )
    log("\noutcomes per request kind:")
    for kind in sorted(report.outcomes):
        counts = ", ".join(f"{outcome} {n}" for outcome, n in sorted(report.outcomes[kind].items()))
        log(f"  {kind:45s} {counts}")
    log("")
    for name in ("asr", "tts"):
        if name in report.memory and "last" in report.memory[name]:
            for process in ("gateway", "worker"):
                growth = report.growth_pct(name, process)
                verdict = "PASS" if growth < GROWTH_TARGET_PCT else "FAIL"
                log(
                    f"{name} {process} RSS growth {first}->{last}: {growth:+.1f}% "
                    f"(target < {GROWTH_TARGET_PCT:g}%) {verdict}"
                )
    log(f"real requests failed: {len(report.real_failures)} (target 0)")
    for line in report.real_failures[:20]:
        log(f"  {line}")
    log(f"bad inputs with an unexpected outcome: {len(report.unexpected)} (target 0)")
    for line in report.unexpected[:20]:
        log(f"  {line}")
    log(f"same worker from request {first} to the end: {report.workers_kept}")
    log(f"both servers serve at the end: {report.final_check}")
    log("PASS" if report.passed else "FAIL")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny-dir", help="Prebuilt tiny checkpoints (default: WYOMING_QWEN_TINY_DIR, else built)")
    parser.add_argument("--verbose", action="store_true", help="Print every request's outcome and time")
    args = parser.parse_args()
    if args.requests < 10:
        parser.error("--requests must be at least 10")
    report = asyncio.run(soak(args.requests, args.seed, args.tiny_dir, verbose=args.verbose))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
