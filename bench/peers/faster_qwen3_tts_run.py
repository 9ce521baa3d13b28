"""faster-qwen3-tts (0.5.4) on one CustomVoice checkpoint, in the peer's own environment.

bench/gpu_peers.py runs this as a subprocess with PYTHONPATH holding only the peer's target folder
(faster-qwen3-tts, qwen-tts-hf's `qwen_tts` and their small dependencies), so it runs on the machine's
transformers 5 and never imports this project or its `qwen_tts`. For each chunk size it streams the sentence
with `FasterQwen3TTS.generate_custom_voice_streaming(..., chunk_size=N)` once to warm up (the first call also
captures the CUDA graphs) and then RUNS times, and prints one line `PEER {json}` per chunk size: the medians
of the time to the first audio and of the compute per second of speech (synthesis time / audio seconds).
faster-qwen3-tts needs CUDA (it replays CUDA graphs); elsewhere this only checks that the peer's packages
import and that the checkpoint loads with them, and says "needs CUDA".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback

SAMPLE_RATE = 24000


def report(**row) -> None:
    print("PEER " + json.dumps(row), flush=True)


def synthesize(model, args, chunk_size: int):
    """(seconds to the first audio, seconds in all, seconds of audio) of one streamed sentence."""
    import torch

    torch.cuda.synchronize()
    started = time.perf_counter()
    first, samples, rate = None, 0, SAMPLE_RATE
    for audio, chunk_rate, _timing in model.generate_custom_voice_streaming(
        text=args.text,
        speaker=args.speaker,
        language=args.language,
        max_new_tokens=args.max_frames,  # its loop yields at most this many frames: the same cap as ours
        chunk_size=chunk_size,
    ):
        rate = chunk_rate
        if first is None and len(audio):
            first = time.perf_counter() - started  # the chunk is a numpy array: decoded and on the host
        samples += len(audio)
    return first, time.perf_counter() - started, samples / rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="CustomVoice checkpoint folder")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--text", required=True)
    parser.add_argument("--speaker", default="ryan")
    parser.add_argument("--language", default="english")
    parser.add_argument("--max-frames", type=int, required=True)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    try:
        import torch
        import transformers

        # the speech tokenizer's config written by transformers 4.57 (tests/tiny_models.py) has no
        # rope_parameters, which transformers 5's MimiConfig wants
        transformers.MimiConfig.rope_theta = 10000.0
        import faster_qwen3_tts
        import qwen_tts
        from faster_qwen3_tts import FasterQwen3TTS
    except Exception as error:  # reported in the table
        traceback.print_exc()
        for chunk in args.chunks:
            report(chunk=chunk, error=f"peer does not import: {type(error).__name__}: {error}")
        return 1
    versions = dict(
        transformers=transformers.__version__,
        qwen_tts=getattr(qwen_tts, "__version__", "?"),
        faster_qwen3_tts=faster_qwen3_tts.__version__,
        torch=torch.__version__,
    )
    print(f"peer environment: {versions}", file=sys.stderr, flush=True)

    if not (args.device.startswith("cuda") and torch.cuda.is_available()):
        try:  # what a CPU can check: the checkpoint loads with the peer's qwen_tts on transformers 5
            from qwen_tts import Qwen3TTSModel

            Qwen3TTSModel.from_pretrained(args.model, device_map="cpu", dtype=torch.float32)
            note = "its packages import and the checkpoint loads here"
        except Exception as error:
            traceback.print_exc()
            note = f"the checkpoint does not load: {type(error).__name__}: {error}"
        for chunk in args.chunks:
            report(chunk=chunk, error=f"needs CUDA (CUDA graphs); {note}", versions=versions)
        return 0

    dtype = getattr(torch, args.dtype)
    torch.cuda.reset_peak_memory_stats()
    try:
        started = time.perf_counter()
        model = FasterQwen3TTS.from_pretrained(args.model, device=args.device, dtype=dtype, attn_implementation="sdpa")
        load_s = time.perf_counter() - started
    except Exception as error:
        traceback.print_exc()
        for chunk in args.chunks:
            report(chunk=chunk, error=f"load: {type(error).__name__}: {error}", versions=versions)
        return 1

    failed = False
    for chunk in args.chunks:
        try:
            runs = [synthesize(model, args, chunk) for _ in range(args.runs + 1)][1:]  # after one warm-up
            report(
                chunk=chunk,
                first_audio_s=statistics.median(first for first, _, _ in runs),
                compute_per_speech_s=statistics.median(total / audio for _, total, audio in runs),
                audio_s=statistics.median(audio for _, _, audio in runs),
                load_s=load_s,
                gpu_mib=torch.cuda.max_memory_allocated() / 2**20,
                versions=versions,
            )
        except Exception as error:
            traceback.print_exc()
            report(chunk=chunk, error=f"{type(error).__name__}: {error}", versions=versions)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
