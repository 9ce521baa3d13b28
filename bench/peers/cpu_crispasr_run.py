"""CrispASR (GGML) Qwen3-ASR on a CPU, in its own environment: `script/bench cpu-peers` runs this with the
Python of the environment that bench/peers/cpu_setup.sh made (the `crispasr` wheel).

The audio file holds 16 kHz float32 utterances, one per row (tests/wyoming_helpers.speechlike, written by the
driver): row 0 warms up, row 1 + i is measured run i decoding at most TOKENS tokens greedily, and row
1 + RUNS + i is decoded once more for a single token, which times the audio encoder and the prefill alone
(random weights write mostly fillers, so the text says little; the difference says that decoding ran).
Prints one line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_common import Clock, run_reported

SAMPLE_RATE = 16000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a Qwen3-ASR GGUF")
    parser.add_argument("--audio", type=Path, required=True, help=".npy, utterances as rows")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="measured runs, after one warm-up")
    args = parser.parse_args()
    row = dict(threads=args.threads)

    def measure() -> list:
        from importlib.metadata import version

        import numpy as np
        from crispasr import Session

        row["version"] = version("crispasr")
        audio = np.load(args.audio)
        if len(audio) < 2 * args.runs + 1:
            raise ValueError(f"{args.audio} has {len(audio)} utterances, {2 * args.runs + 1} needed")
        clock = Clock()
        session = Session(str(args.model), n_threads=args.threads, backend="qwen3")
        row["load_s"] = clock.seconds()

        def once(utterance, tokens: int) -> dict:
            session.set_max_new_tokens(tokens)
            clock = Clock()
            segments = session.transcribe(utterance, SAMPLE_RATE, language="en")
            return clock.record(text_chars=sum(len(segment.text) for segment in segments))

        once(audio[0], args.tokens)
        runs = [once(audio[1 + i], args.tokens) for i in range(args.runs)]
        for i, run in enumerate(runs):
            run["prefill_s"] = once(audio[1 + args.runs + i], 1)["total_s"]
        return runs

    return run_reported(row, measure)


if __name__ == "__main__":
    sys.exit(main())
