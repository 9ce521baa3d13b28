"""float32 against `--quantize int8`, side by side in one run, at the real 0.6B shapes (random weights).

Prints the ASR time for one utterance (not streamed) and the TTS compute per second of speech, each in
float32 and int8 and as a ratio, plus the relative error of the logits (int8 against float32,
teacher-forced over a few hundred steps of each quantized decoder). Targets: both ratios at most 0.35.

Random weights never stop on their own, so the ASR output is capped at a realistic length (about 4
tokens per second of speech) and the TTS sentence at a fixed number of frames.

    script/bench quantize [--shape real-0.6b|bench|tiny] [--seconds 8] [--frames 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tiny_models  # noqa: E402
from wyoming_helpers import scratch_dir, speechlike  # noqa: E402

TARGET_RATIO = 0.35
LOGIT_STEPS = 300
TOKENS_PER_SECOND = 4


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.float() - reference.float()).norm() / reference.float().norm())


@torch.inference_mode()
def asr_logit_error(engine_f32, engine_i8, steps: int = LOGIT_STEPS, seed: int = 0) -> float:
    """Teacher-forced: the same `steps` tokens through both language models, all logits compared."""
    thinker_f, thinker_q = engine_f32.model.thinker, engine_i8.model.thinker
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, thinker_f.lm_head.out_features, (1, steps), generator=generator)
    logits = []
    for thinker in (thinker_f, thinker_q):
        hidden = thinker.model(input_ids=ids, use_cache=False).last_hidden_state
        logits.append(thinker.lm_head(hidden))
    return relative_error(logits[1], logits[0])


@torch.inference_mode()
def tts_logit_error(tts_f32, tts_i8, steps: int = LOGIT_STEPS, seed: int = 0) -> dict:
    """Teacher-forced: the same codec-embedding inputs through both talkers (`steps` frames) and both code
    predictors (their 16 positions, `steps // 16` times); the first codebook's logits compared."""
    generator = torch.Generator().manual_seed(seed)
    talkers = (tts_f32.model.talker, tts_i8.model.talker)
    embedding = talkers[0].get_input_embeddings()
    ids = torch.randint(0, embedding.num_embeddings, (1, steps), generator=generator)
    hidden = [t.model(inputs_embeds=embedding(ids), use_cache=False).last_hidden_state for t in talkers]
    talker_logits = [t.codec_head(h) for t, h in zip(talkers, hidden, strict=True)]
    # the code predictors read talker hidden states (projected); both get the float32 talker's
    rows = (steps // 16) * 16
    cp_inputs = hidden[0][0, :rows].reshape(-1, 16, hidden[0].shape[-1])
    predictors = [t.code_predictor for t in talkers]
    cp_logits = [
        p.lm_head[0](p.model(inputs_embeds=p.small_to_mtp_projection(cp_inputs), use_cache=False).last_hidden_state)
        for p in predictors
    ]
    return {
        "talker": relative_error(talker_logits[1], talker_logits[0]),
        "code predictor": relative_error(cp_logits[1], cp_logits[0]),
    }


def load_asr(checkpoint: Path, quantize: str):
    from wyoming_qwen_asr.engine import AsrEngine

    started = time.monotonic()
    engine = AsrEngine.load(checkpoint, "cpu", torch.float32, quantize=quantize)
    return engine, time.monotonic() - started


def load_tts(checkpoint: Path, quantize: str):
    from wyoming_qwen_tts.engine import TtsEngine

    started = time.monotonic()
    engine = TtsEngine.load(checkpoint, str(checkpoint), "cpu", torch.float32, quantize=quantize)
    return engine, time.monotonic() - started


def time_asr(engine, audios: list, tokens: int) -> float:
    """Median time of one decode per utterance (each utterance new, so the encoder cache never hits)."""
    prompt = engine.prompt("", "English")
    engine.decode(audios[0][:16000], prompt, [], max_new_tokens=2)  # warm-up, untimed
    times = []
    for audio in audios:
        started = time.monotonic()
        engine.decode(audio, prompt, [], max_new_tokens=tokens)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def tts_once(engine, frames: int) -> float:
    """Seconds of compute per second of speech for one sentence of exactly `frames` frames, streamed and
    decoded (seeded, so every run speaks the same codes)."""
    from wyoming_qwen_tts import engine as engine_module
    from wyoming_qwen_tts.voices import PRESET, Voice

    engine_module.FRAMES_PER_CHAR = engine_module.FRAMES_PER_WIDE_CHAR = 0.0
    engine_module.FRAME_MARGIN = frames  # every sentence runs to exactly `frames` frames
    voice = Voice(name=sorted(engine.tts.model.config.talker_config.spk_id)[0], kind=PRESET, description="")
    torch.manual_seed(0)
    started = time.monotonic()
    made = engine.stream("The weather tomorrow will be mild.", voice, "english", lambda _audio: None)
    assert made == frames, made
    return (time.monotonic() - started) / (frames / 12.5)


def time_tts(engine, frames: int, repeats: int) -> float:
    """The median of `repeats` runs of `tts_once`, after one warm-up run."""
    return statistics.median([tts_once(engine, frames) for _ in range(repeats + 1)][1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="real-0.6b", choices=sorted(tiny_models.ASR_SHAPES))
    parser.add_argument("--seconds", type=float, default=8.0, help="ASR utterance length")
    parser.add_argument("--frames", type=int, default=40, help="TTS frames (80 ms each)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    print(
        f"CPU cores available to this process: {len(os.sched_getaffinity(0))}; torch threads: {torch.get_num_threads()}"
    )
    workdir = scratch_dir("bench-quantize-")
    started = time.monotonic()
    asr_dir = tiny_models.build_asr(workdir / "asr", shape=args.shape)
    tts_dir = tiny_models.build_tts(workdir / "tts", shape=args.shape)
    built = time.monotonic() - started
    print(f"checkpoints: random Qwen3-ASR and Qwen3-TTS CustomVoice, shape '{args.shape}' (built in {built:.0f} s)")

    audios = [
        np.frombuffer(speechlike(args.seconds, seed=seed), dtype=np.int16).astype(np.float32) / 32768.0
        for seed in range(args.repeats)
    ]
    tokens = int(args.seconds * TOKENS_PER_SECOND)
    asr = {mode: load_asr(asr_dir, mode) for mode in ("none", "int8")}
    asr_time = {mode: time_asr(engine, audios, tokens) for mode, (engine, _) in asr.items()}
    asr_error = asr_logit_error(asr["none"][0], asr["int8"][0])
    del asr
    tts = {mode: load_tts(tts_dir, mode) for mode in ("none", "int8")}
    tts_time = {mode: time_tts(engine, args.frames, args.repeats) for mode, (engine, _) in tts.items()}
    tts_error = tts_logit_error(tts["none"][0].tts, tts["int8"][0].tts)
    load_times = {mode: seconds for mode, (_, seconds) in tts.items()}

    asr_ratio = asr_time["int8"] / asr_time["none"]
    tts_ratio = tts_time["int8"] / tts_time["none"]
    print(f"\nASR, {args.seconds:g} s utterance, {tokens} tokens, not streamed (median of {args.repeats}):")
    print(f"  float32 {asr_time['none']:.2f} s   int8 {asr_time['int8']:.2f} s", end="   ")
    print(f"ratio {asr_ratio:.2f} (target <= {TARGET_RATIO})")
    print(f"TTS, {args.frames} frames = {args.frames / 12.5:.1f} s of speech, compute per second of speech:")
    print(f"  float32 {tts_time['none']:.2f} s   int8 {tts_time['int8']:.2f} s", end="   ")
    print(f"ratio {tts_ratio:.2f} (target <= {TARGET_RATIO})")
    print(f"TTS load: float32 {load_times['none']:.2f} s, int8 (load + quantize) {load_times['int8']:.2f} s")
    print(f"logit relative error, int8 against float32, {LOGIT_STEPS} teacher-forced steps:")
    print(f"  ASR language model {asr_error:.4f}")
    for name, error in tts_error.items():
        print(f"  TTS {name} {error:.4f}")
    met = asr_ratio <= TARGET_RATIO and tts_ratio <= TARGET_RATIO
    print(f"\ntargets {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
