"""The speech gate (wyoming_qwen_asr/endpointing.py) with a scripted detector: what of an utterance reaches the
model and when it ends, window by window. The real detector on real speech is in test_asr_endpointing.py."""

from __future__ import annotations

import pytest

from wyoming_qwen_asr.endpointing import (
    LEAD_MARGIN,
    MAX_LEADING_SILENCE,
    MIN_SPEECH,
    TAIL_MARGIN,
    WINDOW_BYTES,
    WINDOW_SECONDS,
    SpeechGate,
    silence_for,
)

SPEECH, QUIET = 1, 0


def windows(seconds: float) -> int:
    return round(seconds / WINDOW_SECONDS)


def audio(pattern):
    """PCM whose each window carries its own index (so what comes out can be traced), and the detector's
    verdicts for it: `pattern` is [(SPEECH or QUIET, seconds), ...]."""
    verdicts = [kind for kind, seconds in pattern for _ in range(windows(seconds))]
    pcm = b"".join(index.to_bytes(4, "little") * (WINDOW_BYTES // 4) for index in range(len(verdicts)))
    return pcm, verdicts


def scripted(verdicts):
    def detect(window: bytes) -> float:
        return float(verdicts[int.from_bytes(window[:4], "little")])

    return detect


def indices(pcm: bytes):
    return [int.from_bytes(pcm[i : i + 4], "little") for i in range(0, len(pcm), WINDOW_BYTES)]


def run(pattern, silence=None, piece=3000):
    pcm, verdicts = audio(pattern)
    gate = SpeechGate(scripted(verdicts), silence)
    out = b"".join(gate.push(pcm[i : i + piece]) for i in range(0, len(pcm), piece))
    return gate, out + gate.flush()


def test_leading_silence_is_cut_to_the_margin_and_trailing_silence_too():
    gate, out = run([(QUIET, 2.0), (SPEECH, 1.0), (QUIET, 2.0)])
    first_speech = windows(2.0)
    last_speech = first_speech + windows(1.0) - 1
    kept = indices(out)
    assert kept[0] == first_speech - windows(LEAD_MARGIN)
    assert kept[-1] == last_speech + windows(TAIL_MARGIN)
    assert kept == list(range(kept[0], kept[-1] + 1))  # in order, nothing lost in between
    assert gate.heard_speech and not gate.done


def test_a_pause_is_held_back_then_passed_whole_when_speech_resumes():
    pcm, verdicts = audio([(SPEECH, 1.0), (QUIET, 0.5), (SPEECH, 1.0)])
    gate = SpeechGate(scripted(verdicts), silence=0.8)
    given, pausing = [], []
    for start in range(0, len(pcm), WINDOW_BYTES):
        given.append(len(gate.push(pcm[start : start + WINDOW_BYTES])))
        pausing.append(gate.in_pause)
    pause = range(windows(1.0), windows(1.0) + windows(0.5))
    margin = windows(TAIL_MARGIN)
    assert all(given[i] == WINDOW_BYTES for i in pause[:margin])  # the tail margin at once
    assert pausing[pause[margin - 1]] and not pausing[pause[margin - 2]]  # then the handler decodes it
    assert all(given[i] == 0 for i in pause[margin:])  # the streaming steps see nothing new during the pause
    assert given[pause[-1] + 1] == (len(pause) - margin + 1) * WINDOW_BYTES  # then the rest of it, and the speech
    assert not gate.done and not gate.in_pause  # 0.5 s is shorter than the 0.8 s that ends it


def test_endpointing_ends_after_the_silence_and_ignores_the_rest():
    gate, out = run([(QUIET, 0.5), (SPEECH, 1.0), (QUIET, 1.0), (SPEECH, 1.0)], silence=0.8)
    assert gate.ended and not gate.no_speech
    last_speech = windows(0.5) + windows(1.0) - 1
    assert indices(out)[-1] == last_speech + windows(TAIL_MARGIN)  # the later speech never reaches it
    assert gate.windows == last_speech + 1 + windows(0.8)  # it stopped looking once ended


def test_a_short_noise_is_not_speech_enough_to_end_on():
    gate, out = run([(SPEECH, MIN_SPEECH / 2), (QUIET, 2.0)], silence=0.8)
    assert not gate.heard_speech and not gate.ended and out == b""


def test_nobody_speaking_gives_up_after_the_leading_silence_cap():
    gate, out = run([(QUIET, MAX_LEADING_SILENCE + 1.0)], silence=0.8)
    assert gate.no_speech and out == b""
    gate, out = run([(QUIET, MAX_LEADING_SILENCE + 1.0)])  # no endpointing: waits for audio-stop
    assert not gate.no_speech and not gate.heard_speech and out == b""


@pytest.mark.parametrize("sensitivity, factor", [("relaxed", 1.5), ("default", 1.0), ("aggressive", 0.5), (None, 1.0)])
def test_vad_sensitivity_scales_the_silence(sensitivity, factor):
    assert silence_for(0.8, sensitivity) == pytest.approx(0.8 * factor)
    assert silence_for(None, sensitivity) is None


def test_after_an_endpointed_transcript_the_late_audio_stop_waits_for_nothing():
    """The gateway's view: with endpointing the transcript may come before `audio-stop`, which must then not
    start the request timeout (it would end in a `timeout` error for an answered request)."""
    from wyoming_qwen_asr.kind import TranscriptionReplies

    replies = TranscriptionReplies()
    for event in ("transcribe", "audio-start", "audio-chunk"):
        assert not replies.client_sent(event)
    assert replies.worker_sent("transcript-stop")  # endpointed: the answer is complete
    assert not replies.client_sent("audio-chunk")
    assert not replies.client_sent("audio-stop")  # late: nothing to wait for
    assert not replies.client_sent("transcribe")  # the next utterance waits as ever
    assert replies.client_sent("audio-stop")
    assert replies.worker_sent("transcript-stop")
