"""Ours on a CPU, as the servers run it, for `script/bench cpu-peers`: one task per process, in the project's
environment.

The options are the server's own, parsed by its parser from `--device cpu --threads THREADS` with every other
option at its default: float32, `--quantize auto` (int8 on a CPU), `--cpu-wait passive`. As the server's
launcher does, `shared.cpu_threads.apply` sets the thread count and the OpenMP wait policy before torch is
imported (so the cap is the peers' cap), and the engine loads through the servers' own loader
(`shared.server.model_loader` with the server's `_load_engine`). Then:

  - tts: `engine.stream` as a spoken reply calls it (speaker ryan, the server's first chunk), capped at
    FRAMES frames like the peers (random weights never stop earlier); per run the seconds to the first
    audio, in all and of audio;
  - asr: `engine.decode` as a session's final decode calls it, at most TOKENS tokens, the language forced to
    English like the peers; row 0 of the audio file warms up, row 1 + i is measured run i, row 1 + RUNS + i
    is decoded for one token (encoder and prefill alone; a new utterance, so the encoder cache misses).

Prints one line `RESULT {json}`, as the peers' runners do.

    .venv/bin/python bench/peers/cpu_ours_run.py tts --model DIR/tts-custom-voice --text "..." --frames 64
    .venv/bin/python bench/peers/cpu_ours_run.py asr --model DIR/asr --audio FILE.npy --tokens 32
"""

from __future__ import annotations

import argparse
import sys
import threading
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

from cpu_common import Clock, run_reported  # noqa: E402


def server_options(kind: str, model: Path, threads: int):
    """The `kind` server's options for `model` on a CPU with `threads` threads, all else at its defaults."""
    if kind == "tts":
        from wyoming_qwen_tts.options import parse_args
    else:
        from wyoming_qwen_asr.options import parse_args
    return parse_args(["--model", str(model), "--device", "cpu", "--threads", str(threads), "--local-files-only"])


def load(kind: str, options):
    """The engine as the `kind` server loads it with `options`, and what it runs in."""
    from shared.devices import resolve_dtype
    from shared.quantize import resolve_quantize
    from shared.server import model_loader

    if kind == "tts":
        from wyoming_qwen_tts import app

        load_engine = partial(app._load_engine, options.model, options.cuda_graphs, options.int8_packing)
    else:
        from wyoming_qwen_asr import app

        load_engine = partial(app._load_engine, options.cuda_graphs, options.int8_packing)
    engine = model_loader(options.model, options, load_engine)()
    dtype = str(resolve_dtype(options.dtype, "cpu")).replace("torch.", "")
    quantize = resolve_quantize(options.quantize, "cpu")
    return engine, f"torch {dtype}, --quantize {options.quantize}: {quantize}, --cpu-wait {options.cpu_wait}"


def prepare(engine) -> float:
    """The kernels' preparation that a server runs in the background after the load (fbgemm packing), run
    to its end before measuring; returns its seconds."""
    clock = Clock()
    while engine.prepare_step():
        pass
    return round(clock.seconds(), 3)


def run_tts(args, options, row: dict) -> list:
    import torch

    from wyoming_qwen_tts import engine as engine_module
    from wyoming_qwen_tts.engine import SAMPLE_RATE
    from wyoming_qwen_tts.voices import PRESET, Voice

    clock = Clock()
    engine, row["format"] = load("tts", options)
    row["load_s"] = clock.seconds()
    row["packing_s"] = prepare(engine)
    # every sentence runs to `frames` frames: the engine's cap from the text's length, made a constant
    engine_module.FRAMES_PER_CHAR = engine_module.FRAMES_PER_WIDE_CHAR = 0.0
    engine_module.FRAME_MARGIN = args.frames
    voice = Voice("ryan", PRESET, "ryan")
    first_chunk = options.first_chunk_frames or 0  # 0: the engine's default, as the server passes it
    row["first_chunk_frames"] = first_chunk or engine.default_first_chunk_frames
    stop = threading.Event()

    def once(seed: int) -> dict:
        torch.manual_seed(seed)
        first, samples = None, 0

        def emit(audio) -> None:
            nonlocal first, samples
            if first is None:
                first = clock.seconds()  # a numpy array: decoded
            samples += len(audio)

        clock = Clock()
        frames = engine.stream(args.text, voice, "english", emit, stop.is_set, first_chunk)
        return clock.record(first_audio_s=first, audio_s=samples / SAMPLE_RATE, frames=frames)

    once(0)
    return [once(seed) for seed in range(1, args.runs + 1)]


def run_asr(args, options, row: dict) -> list:
    import numpy as np

    from shared.languages import ASR_LANGUAGES

    audio = np.load(args.audio)
    if len(audio) < 2 * args.runs + 1:
        raise ValueError(f"{args.audio} has {len(audio)} utterances, {2 * args.runs + 1} needed")
    clock = Clock()
    engine, row["format"] = load("asr", options)
    row["load_s"] = clock.seconds()
    row["packing_s"] = prepare(engine)
    prompt = engine.prompt("", ASR_LANGUAGES.to_qwen_name("en"))
    stop = threading.Event()

    def once(utterance, tokens: int) -> dict:
        clock = Clock()
        ids = engine.decode(utterance, prompt, [], max_new_tokens=tokens, should_stop=stop.is_set)
        return clock.record(tokens=len(ids))

    once(audio[0], args.tokens)
    runs = [once(audio[1 + i], args.tokens) for i in range(args.runs)]
    for i, run in enumerate(runs):
        run["prefill_s"] = once(audio[1 + args.runs + i], 1)["total_s"]
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["tts", "asr"])
    parser.add_argument("--model", type=Path, required=True, help="the checkpoint folder")
    parser.add_argument("--text", help="tts: the sentence")
    parser.add_argument("--frames", type=int, default=64, help="tts: frames per sentence")
    parser.add_argument("--audio", type=Path, help="asr: .npy, 16 kHz utterances as rows")
    parser.add_argument("--tokens", type=int, default=32, help="asr: at most this many tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="measured runs, after one warm-up")
    args = parser.parse_args()
    if (args.task == "tts" and not args.text) or (args.task == "asr" and not args.audio):
        parser.error("tts needs --text, asr needs --audio")
    row = dict(threads=args.threads)

    def measure() -> list:
        from shared import cpu_threads

        options = server_options(args.task, args.model, args.threads)
        # what the server's launcher does first, before torch is imported
        cpu_threads.apply(options.threads, options.cpu_wait)
        import torch

        cpu_threads.torch_threads(options.threads)
        row["version"] = f"torch {torch.__version__}"
        return (run_tts if args.task == "tts" else run_asr)(args, options, row)

    return run_reported(row, measure)


if __name__ == "__main__":
    sys.exit(main())
