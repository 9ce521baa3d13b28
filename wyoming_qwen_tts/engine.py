"""Qwen3-TTS through the official wrapper: one sentence at a time, on the inference thread."""

from __future__ import annotations

import logging
import math
import unicodedata
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from shared.standby import EngineStandby, IdleTiers, pages_folder

from .clone_prompts import ClonePromptCache
from .frames import generate_frames, watched_frames
from .incremental_decoder import CONTEXT_FRAMES, IncrementalDecoder
from .voices import CLONE, DESIGN, PRESET, Voice

_LOGGER = logging.getLogger(__name__)

SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920  # one 12.5 Hz codec frame
# Generation cap from text length, so weights that never emit EOS (random ones, a misbehaving
# checkpoint) stop anyway: about 4x a normal speaking rate (Latin script ~0.8 frames per character,
# CJK ~3 per character) plus a margin for short texts.
FRAMES_PER_CHAR = 3.0
FRAMES_PER_WIDE_CHAR = 10.0
FRAME_MARGIN = 12


def max_frames_for(text: str) -> int:
    wide = sum(1 for ch in text if unicodedata.east_asian_width(ch) in ("W", "F"))
    narrow = sum(1 for ch in text if not ch.isspace()) - wide
    return int(math.ceil(FRAMES_PER_CHAR * narrow + FRAMES_PER_WIDE_CHAR * wide)) + FRAME_MARGIN


class TtsEngine(IdleTiers):
    """A loaded Qwen3-TTS model of one kind (CustomVoice, Base or VoiceDesign)."""

    def __init__(self, tts, model_id: str, step_loop=None) -> None:
        self.tts = tts
        self.step_loop = step_loop  # None: the official generate (see frames.py)
        self.model_id = model_id
        self.kind = tts.model.tts_model_type
        self.clone_prompts = ClonePromptCache(model_id)
        self.frames_generated = 0  # progress, read by tests and logs
        self.standby_memory = EngineStandby(self._modules(), None)  # `load` gives it a folder for its pages

    def _modules(self) -> list:
        """The torch modules whose weights standby moves: the model and its codec (a separate module)."""
        return [self.tts.model, self.tts.model.speech_tokenizer.model]

    @property
    def default_first_chunk_frames(self) -> int:
        """The first audio goes out after one frame, on a GPU and on a CPU alike: a frame costs far more than
        the one extra decoder push this adds (CPU, real 0.6B shape, int8, 2 threads: first audio 0.39-0.54 s
        after one frame against 0.69-0.81 s after two, with the same compute per second of speech)."""
        return 1

    @classmethod
    def load(
        cls,
        path: Path,
        model_id: str,
        device: str,
        dtype,
        attention: Optional[str] = None,
        quantize: str = "none",
        cuda_graphs: bool = True,
        int8_packing: str = "background",
    ) -> "TtsEngine":
        """attention: flash_attention_2 or sdpa; default: flash-attention where it is installed and can run.
        quantize "int8": the talker's and code predictor's linear layers in int8 (heads, embeddings and the
        codec decoder stay float). cuda_graphs: on CUDA, frame streaming replays a graph of our step loop
        captured now (frame_graphs.py; with sdpa attention, which the captured steps need). On a CPU our step
        loop streams through the lean decoder (step_loop.cpu_step_loop), bit for bit the official codes."""
        from qwen_tts import Qwen3TTSModel

        from shared.devices import load_pretrained

        graphs = cuda_graphs and str(device).startswith("cuda")
        if graphs:
            attention = "sdpa"
        tts, loaded = load_pretrained(Qwen3TTSModel.from_pretrained, path, device, dtype, attention)
        _LOGGER.info("Qwen3-TTS %s %s", tts.model.tts_model_type, loaded)
        packed: list = []
        packing = None
        if quantize == "int8":
            from shared.quantize import KernelPacking, cache_file, quantize_int8

            talker = tts.model.talker
            what = "the TTS talker and code predictor"
            decoders = [talker.model, talker.code_predictor.model]
            later = int8_packing == "background"  # `--int8-packing`
            quantize_int8(decoders, what, cache=cache_file(path), packed_ranges=packed, pack=not later)
            packing = KernelPacking(decoders, packed) if later else None
        if graphs:
            from .frame_graphs import graphed_step_loop

            engine = cls(tts, model_id, graphed_step_loop(tts))
        elif str(device).startswith("cpu"):
            from .step_loop import cpu_step_loop

            engine = cls(tts, model_id, cpu_step_loop(tts.model.talker))
        else:
            engine = cls(tts, model_id)
        engine.standby_memory = EngineStandby(engine._modules(), pages_folder(path), packed)
        engine.packing = packing
        return engine

    def warm_up(self) -> None:
        """Two frames of a preset speaker, decoded: the first inference of a process pays one-time costs."""
        speakers = sorted(self.tts.model.config.talker_config.spk_id or {})
        if not speakers:  # a clone or design model: warmed by its first sentence
            return
        decoder = IncrementalDecoder(self.tts.model.speech_tokenizer.model.decoder)
        call = self._official_call("Hello.", Voice(speakers[0], PRESET, ""), None, 2)
        generate_frames(self.tts, call, lambda codes: decoder.push(codes[None]), 2, None, self.step_loop)
        if self.step_loop is not None and self.step_loop.graphs is not None:
            self._warm_decoder_shapes()

    def _warm_decoder_shapes(self) -> None:
        """On a GPU each new input length of the codec decoder's convolutions costs a one-time plan of about
        0.1 s (H200 run: 144 ms for a one-frame chunk of a new length, about 20 ms once seen). A sentence
        decodes only a few lengths (the chunk schedule, from a cold or a primed context), so decode them
        all now rather than in the first replies."""
        schedule = chunk_schedule(self.default_first_chunk_frames)
        codes = torch.zeros(sum(schedule) + schedule[-1], 16, dtype=torch.long)
        decoder = self.tts.model.speech_tokenizer.model.decoder
        for primed in (False, True):  # a preset or designed voice, and a cloned one (primed with its reference)
            incremental = IncrementalDecoder(decoder)
            if primed:
                incremental.prime(codes[: 2 * CONTEXT_FRAMES])
            start = 0
            for size in [*schedule, schedule[-1]]:
                incremental.push(codes[start : start + size])
                start += size

    def synthesize(
        self, text: str, voice: Voice, language: Optional[str], should_stop: Optional[Callable[[], bool]] = None
    ) -> np.ndarray:
        """Float32 audio at 24 kHz for one sentence (capped by `max_frames_for`), in one piece: the
        official wrapper's output, its 300-frame chunked decode included. Raises GenerationStopped
        when `should_stop()` says so between two frames."""
        call = self._official_call(text, voice, language, max_frames_for(text))
        with watched_frames(self.tts, should_stop):
            wavs, rate = call()
        assert rate == SAMPLE_RATE, rate
        return np.asarray(wavs[0], dtype=np.float32)

    def stream(
        self,
        text: str,
        voice: Voice,
        language: Optional[str],
        emit: Callable[[np.ndarray], None],
        should_stop: Optional[Callable[[], bool]] = None,
        first_chunk_frames: Optional[int] = None,
    ) -> int:
        """Speak one sentence frame by frame: `emit` gets audio after the first `first_chunk_frames`
        frames, then in growing chunks. The codes are the official `generate`'s; the audio equals one
        full decode of them (reference included for a cloned voice), which is the official wrapper's
        audio up to 300 decoded frames; past that the official 300-frame chunked decode differs
        slightly (see incremental_decoder). The wrapper's own decode never runs, also when the
        sentence ends naturally. Returns the number of frames; raises GenerationStopped when stopped."""
        decoder = IncrementalDecoder(self.tts.model.speech_tokenizer.model.decoder)
        if voice.kind == CLONE:
            (item,) = self.clone_prompts.get(self.tts, voice.folder)
            if item.icl_mode and item.ref_code is not None:
                decoder.prime(item.ref_code)
        schedule = chunk_schedule(first_chunk_frames or self.default_first_chunk_frames)
        pending = []

        def on_frame(codes) -> None:
            pending.append(codes)
            self.frames_generated += 1
            if len(pending) >= schedule[0]:
                emit(decoder.push(torch.stack(pending)))
                pending.clear()
                if len(schedule) > 1:
                    schedule.pop(0)

        max_frames = max_frames_for(text)
        frames = generate_frames(
            self.tts,
            self._official_call(text, voice, language, max_frames),
            on_frame,
            max_frames,
            should_stop,
            self.step_loop,
        )
        if pending:  # the last chunk, padded to its scheduled size: a shape the decoder has seen
            emit(decoder.push(torch.stack(pending), pad_to=schedule[0]))
        return frames

    def _official_call(self, text: str, voice: Voice, language: Optional[str], max_frames: int):
        """The official wrapper call for this voice kind, ready to run."""
        # the wrapper's max_new_tokens=N yields at most N - 1 frames
        # qwen-tts spells its languages in lower case (it lower-cases what it is given, too)
        kwargs = dict(text=text, language=(language or "auto").lower(), max_new_tokens=max_frames + 1)
        if voice.kind == PRESET:
            return lambda: self.tts.generate_custom_voice(speaker=voice.name, **kwargs)
        if voice.kind == CLONE:
            prompt = self.clone_prompts.get(self.tts, voice.folder)
            return lambda: self.tts.generate_voice_clone(voice_clone_prompt=prompt, **kwargs)
        if voice.kind == DESIGN:
            return lambda: self.tts.generate_voice_design(instruct=voice.instruct, **kwargs)
        raise ValueError(f"Unknown voice kind {voice.kind}")


def chunk_schedule(first_chunk_frames: int) -> List[int]:
    """Frames per audio chunk: the first after `first_chunk_frames`, then growing to 12 (the last
    entry repeats), so first audio comes early and the per-chunk overhead stays small later."""
    return [max(1, first_chunk_frames), 4, 8, 12]
