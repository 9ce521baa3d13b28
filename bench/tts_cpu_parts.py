"""Where a CPU TTS frame's time goes, measured in one run on one checkpoint: the talker step, the 15
code-predictor steps (and, inside them, the sampling), the codec decode of the frame, and the Python and
operator overhead (the same steps at the tiny shape, whose arithmetic is negligible). Shares of the whole
frame are what count.

    script/bench tts-cpu-parts [--shape real-0.6b] [--quantize int8] [--frames 24] [--threads 2] [--official]

The steps run as the CPU engine runs them, through the lean decoder (`--official`: through the official
forward), with a talker cache as long as the prompt and frames need.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

CHUNK = 12  # frames per codec push once a reply is under way (wyoming_qwen_tts.engine.chunk_schedule)
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def parts_ms(model_dir: Path, quantize: str, frames: int, lean: bool = True) -> dict:
    """Median milliseconds per frame of each part, over `frames` frames after a prefill."""
    import torch

    from wyoming_qwen_tts.engine import TtsEngine
    from wyoming_qwen_tts.frame_graphs import checkpoint_samplers
    from wyoming_qwen_tts.incremental_decoder import IncrementalDecoder
    from wyoming_qwen_tts.step_loop import FrameSteps

    engine = TtsEngine.load(model_dir, "m", "cpu", torch.float32, quantize=quantize, cuda_graphs=False)
    talker = engine.tts.model.talker
    sampler, predictor_sampler = checkpoint_samplers(engine.tts, "cpu")
    steps = FrameSteps(talker, 12 + frames + 1, lean=lean)
    steps.start(sampler, predictor_sampler)
    hidden = steps.past_hidden.shape[-1]
    torch.manual_seed(0)
    with torch.inference_mode():
        steps.prefill(
            torch.randn(1, 12, hidden) * 0.02,
            torch.ones(1, 12, dtype=torch.long),
            torch.zeros(1, 1, hidden),
            torch.zeros(1, 1, hidden),
        )
    sampled = []
    real_sampler = predictor_sampler.__call__

    def timed_sampler(*args, **kwargs):
        started = time.perf_counter()
        out = real_sampler(*args, **kwargs)
        sampled.append(time.perf_counter() - started)
        return out

    steps.predictor_sampler = _Calls(timed_sampler)
    times = {"talker step": [], "code predictor (15 steps)": [], "of which sampling": [], "codec decode": []}
    all_codes = []
    for index in range(frames):
        sampled.clear()
        started = time.perf_counter()
        steps.predict_codes()
        predicted = time.perf_counter()
        steps.talker_step()
        stepped = time.perf_counter()
        all_codes.append(steps.out[:-1].clone())
        if index >= 2:  # the first frames warm up
            times["code predictor (15 steps)"].append(predicted - started)
            times["of which sampling"].append(sum(sampled))
            times["talker step"].append(stepped - predicted)
    # the codec as the engine runs it after the first chunks: 12 frames a push
    decoder = IncrementalDecoder(engine.tts.model.speech_tokenizer.model.decoder)
    codes = torch.stack(all_codes)
    for start in range(0, len(codes) - CHUNK + 1, CHUNK):
        started = time.perf_counter()
        decoder.push(codes[start : start + CHUNK])
        if start:  # the first push warms up
            times["codec decode"].append((time.perf_counter() - started) / CHUNK)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


class _Calls:
    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def reset(self) -> None:
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="real-0.6b")
    parser.add_argument("--model", type=Path, help="a CustomVoice checkpoint of --shape (default: built now)")
    parser.add_argument("--quantize", default="int8", choices=["none", "int8"])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-wait", default="passive", choices=["passive", "brief", "active"])
    parser.add_argument("--official", action="store_true", help="the official forward instead of the lean decoder")
    args = parser.parse_args(argv)

    from shared import cpu_threads

    cpu_threads.apply(args.threads, args.cpu_wait)
    import tiny_models
    from wyoming_helpers import scratch_dir

    work = scratch_dir("bench-tts-cpu-parts-")
    model = args.model or tiny_models.build_tts(work / "tts", shape=args.shape)
    tiny = tiny_models.build_tts(work / "tiny", shape="tiny")
    real = parts_ms(model, args.quantize, args.frames, not args.official)
    overhead = parts_ms(tiny, "none", args.frames, not args.official)
    total = real["talker step"] + real["code predictor (15 steps)"] + real["codec decode"]
    forward = "official forward" if args.official else "lean decoder"
    setting = f"{args.shape}, --quantize {args.quantize}, {args.threads} threads ({args.cpu_wait}), {forward}"
    print(f"\n{setting}; ms per 80 ms frame (median)")
    print("part | ms | share of the frame | the same at the tiny shape (overhead)")
    for name, ms in real.items():
        print(f"{name} | {ms:.1f} | {ms / total:.2f} | {overhead[name]:.1f}")
    print(f"whole frame | {total:.1f} | 1.00 | {sum(v for k, v in overhead.items() if k != 'of which sampling'):.1f}")
    print(f"compute per second of speech: {total / 80:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
