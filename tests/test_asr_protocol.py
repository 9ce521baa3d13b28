"""The ASR server over real unix and TCP sockets with the `wyoming` client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import numpy as np
import pytest
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.info import Describe, Info

from official import official_transcribe
from wyoming_helpers import read_until, send_audio, speechlike

pytestmark = pytest.mark.asyncio


class PromptSpy:
    """Records what the real model received: the decoded prompt of every decode, its audio and how many tokens it
    generated, on the official generate or on the static-cache loop (CUDA), whichever the engine decodes with."""

    def __init__(self, engine, force_header: str | None = None):
        self.prompts: list[str] = []
        self.audio_samples: list[int] = []
        self.generated: list[int] = []
        self.engine = engine
        self._generate = engine.model.generate
        self._loop = engine.loop
        self._force_ids = engine.tokenizer.encode(force_header, add_special_tokens=False) if force_header else []
        if self._force_ids:
            engine.loop = None  # forcing the first tokens needs generate's logits processors
        if engine.loop is not None:
            self._loop_generate = engine.loop.generate
            engine.loop.generate = self._spy_loop
        engine.model.generate = self._spy

    def _record(self, inputs) -> list:
        ids = inputs["input_ids"][0].tolist()
        self.prompts.append(self.engine.tokenizer.decode(ids, skip_special_tokens=False))
        self.audio_samples.append(int(inputs["feature_attention_mask"].sum()) * 160)
        return ids

    def _spy(self, **inputs):
        ids = self._record(inputs)
        if self._force_ids:
            inputs.setdefault("logits_processor", []).append(_ForcePrefix(self._force_ids, len(ids)))
        out = self._generate(**inputs)
        self.generated.append(out.sequences.shape[1] - len(ids))
        return out

    def _spy_loop(self, inputs, max_new_tokens, after_token):
        self._record(inputs)
        out = self._loop_generate(inputs, max_new_tokens, after_token)
        self.generated.append(len(out))
        return out

    def restore(self):
        self.engine.model.generate = self._generate
        self.engine.loop = self._loop
        if self._loop is not None:
            del self._loop.generate


class _ForcePrefix:
    """Steers the first generated tokens to a fixed header, as a trained model would write it.

    Random weights cannot detect a language; everything else about the generate call stays real.
    """

    def __init__(self, ids, prompt_len):
        self.ids, self.prompt_len = ids, prompt_len

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        if step < len(self.ids):
            forced = scores.new_full(scores.shape, float("-inf"))
            forced[:, self.ids[step]] = 0.0
            return forced
        return scores


async def transcribe(server, pcm, *, language=None, realtime=False, rate=16000, channels=1, **request):
    async with server.client() as client:
        await client.write_event(Transcribe(language=language, **request).event())
        sender = asyncio.create_task(send_audio(client, pcm, rate=rate, channels=channels, realtime=realtime))
        events = await read_until(client, "transcript-stop", "error")
        await sender
        return events


def texts(events, kind):
    return [e.data["text"] for e in events if e.type == kind]


async def test_describe_lists_streaming_asr_program(start_asr):
    server = await start_asr(preload=False)
    async with server.client() as client:
        await client.write_event(Describe().event())
        event = await read_until(client, "info")
    info = Info.from_event(event[-1])
    (program,) = info.asr
    assert program.name == "qwen3-asr"
    assert program.supports_transcript_streaming is True
    assert program.version and program.attribution.name
    (model,) = program.models
    assert model.name == str(server.app.model)
    assert len(model.languages) == 30 and {"en", "de", "zh", "yue", "ja"} <= set(model.languages)
    assert not server.app.manager.is_loaded("asr"), "describe must not load the model"


async def test_describe_answered_while_model_loads(start_asr, monkeypatch):
    from wyoming_qwen_asr import engine as engine_module

    release = threading.Event()
    loading = threading.Event()
    real_load = engine_module.AsrEngine.load

    def slow_load(*args, **kwargs):
        loading.set()
        release.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engine_module.AsrEngine, "load", staticmethod(slow_load))
    server = await start_asr(preload=False)
    async with server.client() as first:
        await first.write_event(Transcribe(language="en").event())
        await send_audio(first, speechlike(1.0))  # triggers the (slow) load
        await asyncio.to_thread(loading.wait, 10)
        assert loading.is_set()
        async with server.client() as second:
            await second.write_event(Describe().event())
            info = await read_until(second, "info", timeout=5)
            assert info[-1].type == "info"
            assert not release.is_set() and not server.app.manager.is_loaded("asr")
        release.set()
        events = await read_until(first, "transcript-stop", "error")
        assert events[-1].type == "transcript-stop"


async def speak_then_collect(client, seconds: float) -> list:
    """Send an English utterance at real-time pace without audio-stop; return what arrived while it was spoken."""
    await client.write_event(Transcribe(language="en").event())
    await send_audio(client, speechlike(seconds), realtime=True, stop=False)
    arrived = []
    while True:
        try:
            arrived.append(await asyncio.wait_for(client.read_event(), timeout=0.05))
        except asyncio.TimeoutError:
            return arrived


async def test_streams_chunks_before_audio_stop_and_they_add_up(start_asr):
    server = await start_asr("--chunk-seconds", "0.5")
    async with server.client() as client:
        before_stop = await speak_then_collect(client, 3.0)
        await client.write_event(AudioStop().event())
        after_stop = await read_until(client, "transcript-stop")
    events = before_stop + after_stop
    assert len([e for e in before_stop if e.type == "transcript-chunk"]) >= 2, [e.type for e in before_stop]
    order = [e.type for e in events]
    assert order[0] == "transcript-start" and order[-2:] == ["transcript", "transcript-stop"]
    assert set(order[1:-2]) == {"transcript-chunk"}
    assert events[0].data["language"] == "en"
    (final,) = texts(events, "transcript")
    assert final and "".join(texts(events, "transcript-chunk")) == final
    assert [e.data.get("language") for e in events if e.type == "transcript"] == ["en"]


async def test_audio_sent_at_once_is_decoded_once_after_audio_stop(start_asr):
    """A recorded file arrives faster than it was spoken: no streaming step starts over part of it (its
    mel features, encoder and prefill could not be cut short, and would delay the final transcript)."""
    server = await start_asr("--chunk-seconds", "0.5")
    spy = PromptSpy(server.app.manager.loaded("asr"))
    pcm = speechlike(3.0, seed=3)
    step = 1600 * 2  # 0.1 s
    try:
        async with server.client() as client:
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            for i in range(0, len(pcm), step):  # 20 times faster than spoken, with room for a step to start
                await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i : i + step]).event())
                await asyncio.sleep(0.005)
            await client.write_event(AudioStop().event())
            events = await read_until(client, "transcript-stop", "error")
    finally:
        spy.restore()
    assert [e.type for e in events][-2:] == ["transcript", "transcript-stop"]
    assert spy.audio_samples == [len(pcm) // 2], "a step decoded part of a burst"


async def test_a_burst_then_real_time_audio_streams_partials(start_asr):
    """A satellite's buffered start (a second of audio at once), then speech at real-time pace: the burst
    puts steps off only while it lasts."""
    server = await start_asr("--chunk-seconds", "0.5")
    pcm = speechlike(3.5, seed=4)
    step = 1600 * 2  # 0.1 s
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for i in range(0, len(pcm), step):
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i : i + step]).event())
            if i >= 16000 * 2:  # after the first second
                await asyncio.sleep(0.1)
        arrived = []
        with contextlib.suppress(asyncio.TimeoutError):
            while True:
                arrived.append(await asyncio.wait_for(client.read_event(), timeout=0.05))
        await client.write_event(AudioStop().event())
        await read_until(client, "transcript-stop")
    assert any(e.type == "transcript-chunk" for e in arrived), [e.type for e in arrived]


async def test_converts_44k_stereo_to_16k_mono(start_asr):
    server = await start_asr("--chunk-seconds", "10")
    spy = PromptSpy(server.app.manager.loaded("asr"))
    events = await transcribe(server, speechlike(3.0, rate=44100, channels=2), language="en", rate=44100, channels=2)
    assert events[-1].type == "transcript-stop"
    assert texts(events, "transcript")[0]
    # the model saw 3 s of 16 kHz audio (mel frames x hop 160)
    assert abs(spy.audio_samples[-1] - 48000) <= 320, spy.audio_samples


async def test_forced_language_and_biasing_reach_the_prompt(start_asr):
    server = await start_asr("--chunk-seconds", "10", "--context", "Home of the Smiths.")
    spy = PromptSpy(server.app.manager.loaded("asr"))
    events = await transcribe(
        server,
        speechlike(1.5),
        language="de",
        transcript_names=["Küchenlicht", "Wohnzimmer"],
        transcript_terms=["Rollladen"],
        context={"text": "Say it in German."},
    )
    assert events[-1].type == "transcript-stop"
    prompt = spy.prompts[-1]
    assert prompt.endswith("language German<asr_text>"), prompt[-60:]
    assert "Home of the Smiths." in prompt and "Say it in German." in prompt
    assert "Names: Küchenlicht, Wohnzimmer" in prompt and "Terms: Rollladen" in prompt
    assert [e.data["language"] for e in events if e.type == "transcript"] == ["de"]


async def test_detected_language_is_reported_as_code(start_asr):
    server = await start_asr("--chunk-seconds", "10")
    spy = PromptSpy(server.app.manager.loaded("asr"), force_header="language German<asr_text>")
    events = await transcribe(server, speechlike(1.5))
    assert "<asr_text>" not in spy.prompts[-1] and spy.prompts[-1].endswith("assistant\n")
    (transcript,) = [e for e in events if e.type == "transcript"]
    assert transcript.data["language"] == "de"
    assert not transcript.data["text"].startswith(("language", "German", "<asr_text>"))
    assert events[0].type == "transcript-start" and events[0].data["language"] == "de"


async def test_output_is_capped_by_audio_length(start_asr):
    from wyoming_qwen_asr.model_io import max_new_tokens_for

    server = await start_asr("--chunk-seconds", "10")
    spy = PromptSpy(server.app.manager.loaded("asr"))
    await transcribe(server, speechlike(2.0), language="en")
    # random weights never emit EOS: the cap is what stopped them
    assert spy.generated == [max_new_tokens_for(2.0)]


async def test_audio_longer_than_the_stream_window_still_transcribes(start_asr, monkeypatch):
    from wyoming_qwen_asr import session as session_module

    monkeypatch.setattr(session_module, "STREAM_WINDOW_SECONDS", 2.0)
    server = await start_asr("--chunk-seconds", "0.5")
    spy = PromptSpy(server.app.manager.loaded("asr"))
    events = await transcribe(server, speechlike(4.0), language="en", realtime=True)
    (final,) = texts(events, "transcript")
    assert final and "".join(texts(events, "transcript-chunk")) == final
    # streaming steps ran, none over more than the window; the final one decoded everything
    assert len(spy.audio_samples) >= 3
    assert max(spy.audio_samples[:-1]) <= 2.0 * 16000 + 320
    assert spy.audio_samples[-1] >= 4.0 * 16000 - 320


async def test_two_clients_at_once_both_complete(start_asr):
    server = await start_asr("--chunk-seconds", "0.5")
    results = await asyncio.gather(
        transcribe(server, speechlike(2.0, seed=1), language="en", realtime=True),
        transcribe(server, speechlike(2.0, seed=2), language="de", realtime=True),
    )
    for events, code in zip(results, ("en", "de"), strict=True):
        assert events[-1].type == "transcript-stop"
        (transcript,) = [e for e in events if e.type == "transcript"]
        assert transcript.data["language"] == code
        assert "".join(texts(events, "transcript-chunk")) == transcript.data["text"]


async def test_idle_unload_releases_the_model(start_asr):
    server = await start_asr("--idle-unload", "1", preload=False)
    manager = server.app.manager
    await transcribe(server, speechlike(1.0), language="en")
    assert manager.load_count("asr") == 1
    for _ in range(100):
        if not manager.is_loaded("asr"):
            break
        await asyncio.sleep(0.1)
    assert not manager.is_loaded("asr") and manager.unload_count("asr") == 1
    # and it comes back on the next request
    events = await transcribe(server, speechlike(1.0), language="en")
    assert events[-1].type == "transcript-stop" and manager.load_count("asr") == 2


async def test_tcp_socket(start_asr):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = await start_asr(uri=f"tcp://127.0.0.1:{port}")
    events = await transcribe(server, speechlike(1.0), language="en")
    assert events[-1].type == "transcript-stop"


# -- bad input ---------------------------------------------------------------------------------


async def assert_still_serving(server):
    events = await transcribe(server, speechlike(1.0), language="en")
    assert events[-1].type == "transcript-stop"


async def test_audio_before_audio_start_is_an_error(start_asr):
    server = await start_asr()
    async with server.client() as client:
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\0" * 320).event())
        (error,) = await read_until(client, "error")
        assert "before audio-start" in error.data["text"]
        # the same connection keeps working
        await client.write_event(Describe().event())
        assert (await read_until(client, "info"))[-1].type == "info"
    await assert_still_serving(server)


async def test_chunk_in_another_format_is_an_error(start_asr):
    server = await start_asr()
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\0" * 3200).event())
        await client.write_event(AudioChunk(rate=22050, width=2, channels=1, audio=b"\0" * 3200).event())
        events = await read_until(client, "error")
        assert "22050" in events[-1].data["text"] and "16000" in events[-1].data["text"]
    assert server.app.manager.users("asr") == 0
    await assert_still_serving(server)


async def test_empty_utterance_gives_empty_transcript(start_asr):
    server = await start_asr()
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioStop().event())
        events = await read_until(client, "transcript-stop")
    assert [e.type for e in events] == ["transcript-start", "transcript", "transcript-stop"]
    assert events[1].data["text"] == ""


async def test_disconnect_mid_stream_frees_the_session(start_asr):
    server = await start_asr("--chunk-seconds", "0.3")
    async with server.client() as client:
        await client.write_event(Transcribe(language="en").event())
        await send_audio(client, speechlike(1.5), realtime=True, stop=False)
        assert server.app.manager.users("asr") == 1
    for _ in range(50):
        if server.app.manager.users("asr") == 0:
            break
        await asyncio.sleep(0.1)
    assert server.app.manager.users("asr") == 0
    await assert_still_serving(server)


async def test_unknown_events_are_ignored_and_malformed_known_ones_get_an_error(start_asr):
    """As the Wyoming peers do: the protocol keeps adding events (select-program in wyoming 1.10)."""
    server = await start_asr()
    async with server.client() as client:
        await client.write_event(Event(type="make-coffee"))
        await client.write_event(Event(type="select-program", data={"name": "qwen3-asr"}))
        await client.write_event(Describe().event())
        assert [e.type for e in await read_until(client, "info")] == ["info"]  # nothing for the unknown ones
        await client.write_event(Event(type="audio-start", data={"width": 2, "channels": 1}))  # no rate
        (error,) = await read_until(client, "error")
        assert error.data["code"] == "malformed-event" and "audio-start" in error.data["text"]
    await assert_still_serving(server)


async def test_unsupported_language_lists_the_supported_ones(start_asr):
    server = await start_asr()
    async with server.client() as client:
        await client.write_event(Transcribe(language="tlh").event())
        (error,) = await read_until(client, "error")
    assert (
        "tlh" in error.data["text"] and "en (English)" in error.data["text"] and "yue (Cantonese)" in error.data["text"]
    )
    await assert_still_serving(server)


@pytest.mark.parametrize("quantize", ["none", "int8"])
async def test_unstreamed_request_equals_the_official_transcribe(start_asr, quantize):
    """With no streaming step, the server's transcript is the official `transcribe` output, in both modes. In
    float32 also on a GPU: in half precision the graphed decode loop (a masked static cache) and the official
    generate (a growing cache) run other attention kernels, and a near tie may go either way."""

    server = await start_asr(
        "--chunk-seconds", "100", "--context", "Kitchen", "--quantize", quantize, "--dtype", "float32"
    )
    engine = server.app.manager.loaded("asr")
    quantized = [m for m in engine.model.modules() if type(m).__name__ == "Int8Linear"]
    assert bool(quantized) == (quantize == "int8")
    pcm = speechlike(2.5, seed=7)
    events = await transcribe(server, pcm, language="en")
    (transcript,) = texts(events, "transcript")
    audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    official = await server.app.manager.run(
        "asr", lambda engine: official_transcribe(engine, audio, "Kitchen", "English")
    )
    assert transcript == official.text and official.text


async def test_partials_and_caps_hold_on_the_graphed_decode_loop(start_asr):
    """What a GPU runs, on the CPU: the static-cache decode loop replaying its captured step (on the strict CPU
    stand-in) streams partials before audio-stop that add up to the final transcript, within the output cap."""
    from shared.graphs import EagerGraphs
    from wyoming_qwen_asr.model_io import max_new_tokens_for

    # float32: the stand-in re-runs each step under an operator trace, several times slower than a GPU's replay
    server = await start_asr("--chunk-seconds", "0.5", "--quantize", "none")
    engine = server.app.manager.loaded("asr")
    engine.loop = await server.app.manager.run("asr", lambda engine: engine.decode_loop(EagerGraphs()))
    spy = PromptSpy(engine)
    async with server.client() as client:
        before_stop = await speak_then_collect(client, 3.0)
        await client.write_event(AudioStop().event())
        events = before_stop + await read_until(client, "transcript-stop")
    # at least one partial before audio-stop even on a busy CI machine (the official path's test asks for two)
    assert [e for e in before_stop if e.type == "transcript-chunk"]
    (final,) = texts(events, "transcript")
    assert final and "".join(texts(events, "transcript-chunk")) == final
    assert len(spy.generated) >= 3 and all(0 < n <= max_new_tokens_for(3.0) for n in spy.generated)
    assert all("language English<asr_text>" in prompt for prompt in spy.prompts)  # then the committed prefix
    assert engine.loop.timing.graphed
    spy.restore()
