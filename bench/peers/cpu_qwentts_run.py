"""qwentts.cpp (GGML) on a CPU, in its own environment: `script/bench cpu-peers` runs this with the Python of
the environment that bench/peers/cpu_setup.sh made (realtimetts-qwen-native-cpu, the CPU build of qwentts.cpp
behind the same C ABI as qwentts-cpp-python, whose wheels need CUDA and glibc 2.38).

It loads the Q8_0 talker and codec, streams the sentence once to warm up and then RUNS times, speaker ryan,
at most FRAMES frames (random weights never stop earlier), and prints one line `RESULT {json}`: per run the
seconds to the first audio chunk, in all, of audio, and the other processes' share of the cores.
`--stream-frames`: qwentts.cpp's `cpu_stream_frames`, 2 for 160 ms chunks, 0 for its native default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_common import Clock, run_reported

SAMPLE_RATE = 24000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--talker", type=Path, required=True)
    parser.add_argument("--codec", type=Path, required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--stream-frames", type=int, default=2, choices=[0, 1, 2, 4])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="measured runs, after one warm-up")
    args = parser.parse_args()
    row = dict(threads=args.threads, stream_frames=args.stream_frames)

    def measure() -> list:
        from importlib.metadata import version

        from qwentts_cpp_cpu import QwenTTS

        row["version"] = version("realtimetts-qwen-native-cpu")
        clock = Clock()
        tts = QwenTTS(args.talker, args.codec, cpu_threads=args.threads, cpu_stream_frames=args.stream_frames)
        row["load_s"] = clock.seconds()
        row["native"] = tts.library.version()

        def once(seed: int) -> dict:
            first, samples = None, 0
            clock = Clock()
            chunks = tts.stream(text=args.text, lang="english", speaker="ryan", max_new_tokens=args.frames, seed=seed)
            for chunk, rate in chunks:
                if first is None:
                    first = clock.seconds()
                assert rate == SAMPLE_RATE, rate
                samples += len(chunk)
            return clock.record(first_audio_s=first, audio_s=samples / SAMPLE_RATE)

        once(0)
        return [once(seed) for seed in range(1, args.runs + 1)]

    return run_reported(row, measure)


if __name__ == "__main__":
    sys.exit(main())
