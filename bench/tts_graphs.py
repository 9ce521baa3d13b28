"""Where a TTS frame's time goes, side by side in one run, on one checkpoint and one sentence:
- frame generation (codes only, no audio) in each form: the official `generate` (watched by a hook), our
  step loop run eagerly, its frame as two graphs (code predictor; talker step), as one graph, and with
  --compile one graph of the frame compiled by torch.compile first. Time to the first frame (prompt,
  prefill and one frame) and milliseconds per frame after it, as a ratio to the official loop;
- the codec decode: milliseconds per chunk of 1, 2, 4, 8 and 12 frames (incremental decoder), per frame;
- the whole engine (`TtsEngine.stream`, default chunk schedule): first audio and compute per second of speech.
On a CPU the graphs run on the eager stand-in of shared/graphs.py (a dry run: it re-runs each step).

    script/bench tts-graphs --model DIR [--device cuda] [--dtype bfloat16] [--frames 120] [--compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SENTENCE = "The lights in the kitchen are off now, and the front door is locked for the night."
CHUNKS = (1, 2, 4, 8, 12)


def timed_frames(tts, runtime, step_loop, frames: int, seed: int = 0):
    """(seconds to the first frame, seconds per later frame, frames, the codes) of one sentence."""
    import torch

    from wyoming_qwen_tts.frames import generate_frames

    call = lambda: tts.generate_custom_voice(  # noqa: E731
        text=SENTENCE, speaker=_speaker(tts), language="english", max_new_tokens=frames + 1
    )
    stamps, codes = [], []

    def take(frame):
        stamps.append(time.perf_counter())
        codes.append(frame)

    torch.manual_seed(seed)
    runtime.synchronize()
    started = time.perf_counter()
    generate_frames(tts, call, take, frames, step_loop=step_loop)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return stamps[0] - started, statistics.median(gaps), len(stamps), torch.stack(codes).cpu()


def _speaker(tts) -> str:
    return sorted(tts.model.config.talker_config.spk_id)[0]


def decode_ms(tts, runtime, chunk: int, pushes: int = 6) -> float:
    import torch

    from wyoming_qwen_tts.incremental_decoder import IncrementalDecoder

    decoder = IncrementalDecoder(tts.model.speech_tokenizer.model.decoder)
    codes = torch.randint(0, 2048, (chunk * (pushes + 2), 16), generator=torch.Generator().manual_seed(chunk))
    times = []
    for i in range(pushes + 2):
        runtime.synchronize()
        started = time.perf_counter()
        decoder.push(codes[i * chunk : (i + 1) * chunk])  # returns host audio: synchronised
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times[2:])


def engine_figures(engine, runtime, repeats: int):
    from wyoming_qwen_tts.voices import PRESET, Voice

    voice = Voice(_speaker(engine.tts), PRESET, "")
    firsts, rtfs = [], []
    for _ in range(repeats + 1):
        samples, first = 0, None
        runtime.synchronize()
        started = time.perf_counter()

        def emit(audio, started=started):
            nonlocal samples, first
            first = first or time.perf_counter() - started
            samples += len(audio)

        engine.stream(SENTENCE, voice, "english", emit)
        rtfs.append((time.perf_counter() - started) / (samples / 24000))
        firsts.append(first)
    return statistics.median(firsts[1:]), statistics.median(rtfs[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a CustomVoice checkpoint (tests/tiny_models.py builds one)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure the frame compiled by torch.compile")
    args = parser.parse_args()

    import torch

    from shared.devices import resolve_device, resolve_dtype
    from shared.graphs import runtime_for
    from wyoming_qwen_tts.engine import TtsEngine
    from wyoming_qwen_tts.frame_graphs import graphed_step_loop
    from wyoming_qwen_tts.step_loop import FrameSteps, StepLoop

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    runtime = runtime_for(device)
    started = time.perf_counter()
    engine = TtsEngine.load(Path(args.model), args.model, device, dtype, cuda_graphs=False)
    print(f"loaded {args.model} on {device} ({dtype}) in {time.perf_counter() - started:.1f} s", flush=True)
    tts = engine.tts
    talker = tts.model.talker

    loops = {"official generate": lambda: None, "step loop, eager": lambda: StepLoop(talker, FrameSteps(talker, 2048))}
    loops["2 graphs per frame"] = lambda: graphed_step_loop(tts, runtime, granularity="steps")
    loops["1 graph per frame"] = lambda: graphed_step_loop(tts, runtime)
    if args.compile:
        loops["1 graph, compiled"] = lambda: graphed_step_loop(tts, runtime, compile_frame=True)
    rows, codes = {}, {}
    for name, make in loops.items():
        try:
            started = time.perf_counter()
            loop = make()
            setup = time.perf_counter() - started
            timed_frames(tts, runtime, loop, 8)  # warm-up
            runs = [timed_frames(tts, runtime, loop, args.frames, seed) for seed in range(args.repeats)]
            first = statistics.median(r[0] for r in runs)
            per_frame = statistics.median(r[1] for r in runs)
            rows[name] = dict(setup_s=setup, first_frame_s=first, frame_ms=1000 * per_frame, frames=runs[0][2])
            codes[name] = runs[0][3]
        except Exception as err:  # one variant failing must not hide the others
            rows[name] = dict(error=f"{type(err).__name__}: {err}"[:300])
        print(name, rows[name], flush=True)

    eager = codes.get("step loop, eager")
    for name in codes:  # the same kernels, replayed or not: the same codes (seed 0)
        if name not in ("official generate", "step loop, eager") and eager is not None:
            rows[name]["codes_equal_eager"] = bool(torch.equal(codes[name], eager))
    base = rows["official generate"].get("frame_ms")
    print(f"\nframes of '{SENTENCE[:40]}...' on {device}, {dtype}; {args.frames} frames, median of {args.repeats}")
    print("variant | setup s | first frame ms | ms per frame | x official | s per s of speech (codes only) | = eager")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name} | failed: {r['error']}")
            continue
        ratio = r["frame_ms"] / base if base else float("nan")
        print(
            f"{name} | {r['setup_s']:.2f} | {1000 * r['first_frame_s']:.1f} | {r['frame_ms']:.2f} | {ratio:.3f} | "
            f"{r['frame_ms'] / 80:.3f} | {r.get('codes_equal_eager', '-')}"
        )
    decode = {chunk: decode_ms(tts, runtime, chunk) for chunk in CHUNKS}
    print("codec decode: frames per chunk | ms per chunk | ms per frame")
    for chunk, ms in decode.items():
        print(f"{chunk} | {ms:.2f} | {ms / chunk:.2f}")
    engine.step_loop = graphed_step_loop(tts, runtime)
    first, rtf = engine_figures(engine, runtime, args.repeats)
    print(f"engine (1 graph per frame, default chunks): first audio {1000 * first:.1f} ms, {rtf:.3f} s per s of speech")
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        print(f"GPU memory peak: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    summary = dict(rows=rows, decode_ms=decode, engine_first_audio_s=first, engine_rtf=rtf)
    print("JSON " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
