#!/usr/bin/env bash
# The peers of `script/bench cpu-peers`, set up under a work folder (default /tmp/wyoming-qwen-cpu-peers, or
# CPU_PEERS_WORK); each step is skipped when its result is there, so a second run costs seconds:
#   - one virtual environment per peer, never the project's: realtimetts-qwen-native-cpu (qwentts.cpp's engine,
#     CPU build) and crispasr, each with gguf (pinned: the converters and
#     bench/peers/gguf_quantize.py were checked with it);
#   - random Qwen3-ASR and Qwen3-TTS CustomVoice checkpoints at the real 0.6B shapes (tests/tiny_models.py);
#   - those converted with each peer's own converter, taken from the peer's repository now (peer code is
#     not part of this project): qwentts.cpp convert.py -> talker and codec at Q8_0; CrispASR
#     convert-qwen3-asr-to-gguf.py -> Q4_K (its recommended file) and Q8_0. The peers ship their quantizers
#     as C++ only; bench/peers/gguf_quantize.py applies their per-tensor rules with the ggml of their wheels.
# Needs the network for the wheels, about 12 GB of disk and 2 to 10 minutes (2 cores; most of it downloads).
#
#   QWENTTS_SRC=DIR CRISPASR_SRC=DIR bench/peers/cpu_setup.sh
#
# QWENTTS_SRC and CRISPASR_SRC: git directories of the peers' repositories (a clone's .git, or a bare clone);
# the converters are read from their HEAD. Needed only while a conversion is still to be made.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${CPU_PEERS_WORK:-/tmp/wyoming-qwen-cpu-peers}"
PYTHON="${CPU_PEERS_PYTHON:-python3}" # makes the peers' environments
OURS="$ROOT/.venv/bin/python"
QUANTIZE="$ROOT/bench/peers/gguf_quantize.py"
GGUF="gguf==0.19.0"

source_dir() { # NAME VARIABLE URL: the git directory in $VARIABLE, or a message on how to get one
  local dir="${!2:-}"
  if [ -z "$dir" ] || ! git -C "$dir" rev-parse --verify -q HEAD >/dev/null; then
    echo "cpu_setup: $2 must name a git directory of $1 (its converters are read from HEAD), e.g." >&2
    echo "  git clone --bare $3 /tmp/$1.git && export $2=/tmp/$1.git" >&2
    exit 2
  fi
  echo "$dir"
}
[ -x "$OURS" ] || { echo "cpu_setup: no $OURS: run script/setup first" >&2; exit 2; }

step() { echo "cpu_setup: $*" >&2; }
mkdir -p "$WORK"
cd "$WORK"

# --- environments ------------------------------------------------------------------------------------------
environment() { # DIR IMPORTS PACKAGES...: (re)made unless its Python imports IMPORTS
  local dir="$1" imports="$2"
  shift 2
  "$dir/bin/python" -c "import $imports" 2>/dev/null && return
  step "environment $dir: $*"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
}
environment venv-qwentts "qwentts_cpp_cpu, gguf" realtimetts-qwen-native-cpu==0.4.2 "$GGUF"
environment venv-crispasr "crispasr, gguf" crispasr==0.8.45 "$GGUF"
# the converters need torch and safetensors, read from the project's environment (nothing is installed
# there), and gguf-py, installed aside
if ! PYTHONPATH="$WORK/pylib" "$OURS" -c "import gguf" 2>/dev/null; then
  step "gguf for the converters in $WORK/pylib"
  rm -rf pylib
  "$OURS" -m pip install -q --disable-pip-version-check --no-deps --target pylib "$GGUF"
fi
convert() { PYTHONPATH="$WORK/pylib" "$OURS" "$@"; }

# --- checkpoints -------------------------------------------------------------------------------------------
CKPT="$WORK/checkpoints"
if [ ! -f "$CKPT/asr/config.json" ] || [ ! -f "$CKPT/tts-custom-voice/config.json" ]; then
  step "random real-0.6B checkpoints in $CKPT"
  rm -rf "$CKPT" "$CKPT.part"
  (cd "$ROOT" && "$OURS" tests/tiny_models.py "$CKPT.part" --shape real-0.6b --only asr --only tts-custom-voice)
  mv "$CKPT.part" "$CKPT"
fi
# qwentts.cpp's convert.py reads two decoder keys that the official decoder hard-codes; tests/tiny_models.py
# writes them as the published config does
"$OURS" - "$CKPT/tts-custom-voice/speech_tokenizer/config.json" <<'EOF'
import json, sys
decoder = json.load(open(sys.argv[1]))["decoder_config"]
missing = {"num_semantic_quantizers", "vector_quantization_hidden_dimension"} - set(decoder)
sys.exit(f"{sys.argv[1]}: decoder_config lacks {sorted(missing)}" if missing else 0)
EOF

# --- qwentts.cpp: convert.py (F32) -> Q8_0 talker and codec ------------------------------------------------
QT_MODELS="$WORK/qwentts/models"
TALKER="qwen-talker-0.6b-customvoice"
CODEC="qwen-tokenizer-12hz"
# converter.txt, written last, says the step is done
if [ ! -f "$QT_MODELS/converter.txt" ] || [ ! -f "$QT_MODELS/$TALKER-Q8_0.gguf" ] \
  || [ ! -f "$QT_MODELS/$CODEC-Q8_0.gguf" ]; then
  QWENTTS_SRC="$(source_dir qwentts.cpp QWENTTS_SRC https://github.com/ServeurpersoCom/qwentts.cpp)"
  step "qwentts.cpp conversion ($(git -C "$QWENTTS_SRC" rev-parse --short HEAD))"
  rm -rf qwentts/convert
  mkdir -p qwentts/convert/checkpoints "$QT_MODELS"
  git -C "$QWENTTS_SRC" show HEAD:convert.py >qwentts/convert/convert.py
  # convert.py converts every folder of checkpoints/ it recognises by name, into models/
  ln -s "$CKPT/tts-custom-voice" qwentts/convert/checkpoints/Qwen3-TTS-12Hz-0.6B-CustomVoice
  ln -s "$CKPT/tts-custom-voice/speech_tokenizer" qwentts/convert/checkpoints/Qwen3-TTS-Tokenizer-12Hz
  (cd qwentts/convert && convert convert.py)
  for model in "$TALKER" "$CODEC"; do
    venv-qwentts/bin/python "$QUANTIZE" --package qwentts_cpp_cpu --policy qwentts \
      "qwentts/convert/models/$model-F32.gguf" "$QT_MODELS/$model-Q8_0.gguf" Q8_0
  done
  echo "convert.py of $(git -C "$QWENTTS_SRC" rev-parse --short HEAD)" >"$QT_MODELS/converter.txt"
  rm -rf qwentts/convert # the F32 files: 4 GB
fi

# --- CrispASR: convert-qwen3-asr-to-gguf.py (F16) -> Q4_K (recommended) and Q8_0 ---------------------------
CR_MODELS="$WORK/crispasr/models"
if [ ! -f "$CR_MODELS/converter.txt" ] || [ ! -f "$CR_MODELS/qwen3-asr-0.6b-q4_k.gguf" ] \
  || [ ! -f "$CR_MODELS/qwen3-asr-0.6b-q8_0.gguf" ]; then
  CRISPASR_SRC="$(source_dir CrispASR CRISPASR_SRC https://github.com/CrispStrobe/CrispASR)"
  step "CrispASR conversion ($(git -C "$CRISPASR_SRC" rev-parse --short HEAD))"
  rm -rf crispasr/convert
  mkdir -p crispasr/convert "$CR_MODELS"
  git -C "$CRISPASR_SRC" show HEAD:models/convert-qwen3-asr-to-gguf.py >crispasr/convert/convert-qwen3-asr-to-gguf.py
  convert crispasr/convert/convert-qwen3-asr-to-gguf.py --input "$CKPT/asr" --output crispasr/convert/f16.gguf
  for type in Q4_K Q8_0; do
    venv-crispasr/bin/python "$QUANTIZE" --package crispasr --policy crispasr \
      crispasr/convert/f16.gguf "$CR_MODELS/qwen3-asr-0.6b-${type,,}.gguf" "$type"
  done
  echo "convert-qwen3-asr-to-gguf.py of $(git -C "$CRISPASR_SRC" rev-parse --short HEAD)" >"$CR_MODELS/converter.txt"
  rm -rf crispasr/convert # the F16 file: 2 GB
fi

# what the driver prints beside its table
version() { "$1" -c "import importlib.metadata as m; print(m.version('$2'))"; }
{
  echo "qwentts.cpp: $(cat "$QT_MODELS/converter.txt")," \
    "realtimetts-qwen-native-cpu $(version venv-qwentts/bin/python realtimetts-qwen-native-cpu)"
  echo "CrispASR: $(cat "$CR_MODELS/converter.txt"), crispasr $(version venv-crispasr/bin/python crispasr)"
} >versions.txt
step "done: $WORK ($(du -sh "$WORK" | cut -f1))"
