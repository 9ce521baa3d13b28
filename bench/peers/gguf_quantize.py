"""Quantize an F32/F16 GGUF the way a peer's own quantizer would, with the ggml of the peer's own wheel.

qwentts.cpp (`tools/quantize.cpp`) and CrispASR (`examples/crispasr-quantize/main.cpp`) ship their
quantizers only as C++ source. This re-implements their choice of type per tensor, for the files
bench/peers/cpu_setup.sh makes (qwentts.cpp's Qwen3-TTS talker and codec at Q8_0; CrispASR's Qwen3-ASR at
Q4_K or Q8_0), and quantizes each row with `ggml_quantize_chunk` from the libggml-base that the peer's wheel
bundles, so the bytes are the ones ggml itself writes. Run in the peer's environment (numpy and gguf):

    python bench/peers/gguf_quantize.py --package qwentts_cpp_cpu --policy qwentts IN.gguf OUT.gguf Q8_0
    python bench/peers/gguf_quantize.py --package crispasr --policy crispasr IN.gguf OUT.gguf Q4_K

OUT is written as OUT.part and renamed at the end, so an interrupted run leaves no file that looks done.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter

BLOCK = {Q.Q8_0: 32, Q.Q4_0: 32, Q.Q4_K: 256}
# general.file_type as crispasr-quantize writes it (ggml's ftype numbers)
CRISPASR_FILE_TYPE = {Q.Q8_0: 7, Q.Q4_K: 15}


def n_dims(shape: Tuple[int, ...]) -> int:
    """ggml_n_dims: the dimensions up to the last one above 1 (`shape` in numpy order, rows first)."""
    dims = 1
    for index, size in enumerate(reversed(shape)):
        if size > 1:
            dims = index + 1
    return dims


def qwentts_type(name: str, shape: Tuple[int, ...], source: Q, arch: str, wanted: Q) -> Optional[Q]:
    """tools/quantize.cpp, `should_quantize` and `pick_type` of the Q8_0 variant (no bumped tensors; its
    embeddings are Q8_0 too): None keeps the tensor as it is."""
    if source not in (Q.F32, Q.F16, Q.BF16) or n_dims(shape) < 2 or "vae" in arch:
        return None
    kept = (
        "silence_latent",
        "scale_shift_table",
        "null_condition_emb",
        # snake activations: per-channel floats the DAC loaders widen to F32 themselves
        ".snake.alpha",
        ".snake.beta",
        ".act1.alpha",
        ".act1.beta",
        ".act2.alpha",
        ".act2.beta",
        ".snake1.alpha",
        ".snake2.alpha",
        # RVQ codebooks and their projections: nearest-neighbour lookups, kept F32
        "tok_enc.vq_",
        "tok_dec.vq_",
        "spk_enc.fc.weight",
    )
    if any(part in name for part in kept):
        return None
    # conv kernels (K = 7, 3, 1) fit no block: F16, which its conv loader reads anyway
    return wanted if shape[-1] % BLOCK[wanted] == 0 else Q.F16


def crispasr_type(name: str, shape: Tuple[int, ...], source: Q, arch: str, wanted: Q) -> Optional[Q]:
    """examples/crispasr-quantize/main.cpp, the rules that reach a Qwen3-ASR file: 2-D weights except norms,
    the heads and embeddings; Q4_K rows that 256 does not divide fall back to Q4_0; the audio tower is
    floored at Q8_0 (its "sub-8-bit audio.* compounds per-block drift" rule)."""
    if source not in (Q.F32, Q.F16):
        return None
    weight = (
        "weight" in name
        or name.endswith(("_w", ".w"))
        or any(part in name for part in ("_proj", ".gate", ".up", ".wo", ".heads.", ".wq", ".wk", ".wv"))
    )
    if n_dims(shape) != 2 or not weight or "norm" in name:
        return None
    if name.startswith(("proj.", "lm_head.", "tok_emb.", "lang_emb.", "enc_proj.")):
        return None
    columns = shape[-1]
    target = wanted
    if columns % BLOCK[target]:
        target = Q.Q4_0 if target == Q.Q4_K and columns % BLOCK[Q.Q4_0] == 0 else None
    if target is None:
        return None
    if arch in ("qwen3asr", "qwen3-asr") and name.startswith("audio.") and target != Q.Q8_0:
        return Q.Q8_0 if columns % BLOCK[Q.Q8_0] == 0 else None
    return target


POLICIES = {"qwentts": (qwentts_type, {Q.Q8_0}), "crispasr": (crispasr_type, {Q.Q8_0, Q.Q4_K})}


def ggml_library(package: str) -> ctypes.CDLL:
    """libggml-base of an installed wheel, found without importing the package (which loads its backends)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {package} is not installed in {sys.prefix}")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("libggml-base.so*"))
        if found:
            library = ctypes.CDLL(str(found[0]))
            library.ggml_quantize_chunk.restype = ctypes.c_size_t
            library.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
            library.ggml_quantize_chunk.argtypes += [ctypes.c_int64] * 3 + [ctypes.c_void_p]
            library.ggml_row_size.restype = ctypes.c_size_t
            library.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
            library.ggml_quantize_init.argtypes = [ctypes.c_int]
            return library
    sys.exit(f"no libggml-base.so in the package {package}")


def quantize_rows(library: ctypes.CDLL, values: np.ndarray, target: Q) -> np.ndarray:
    """Rows of float32 `values` (numpy order, rows first) as `target` blocks: uint8, one row per row."""
    columns = values.shape[-1]
    rows = values.size // columns
    library.ggml_quantize_init(int(target))
    row_bytes = library.ggml_row_size(int(target), columns)
    out = np.empty(rows * row_bytes, dtype=np.uint8)
    written = library.ggml_quantize_chunk(int(target), values.ctypes.data, out.ctypes.data, 0, rows, columns, None)
    if written != out.size:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, not {out.size}")
    return out.reshape(*values.shape[:-1], row_bytes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", required=True, help="the peer's Python package that bundles libggml-base")
    parser.add_argument("--policy", required=True, choices=sorted(POLICIES))
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("type", help="Q8_0 (both policies) or Q4_K (crispasr)")
    args = parser.parse_args()
    choose, allowed = POLICIES[args.policy]
    wanted = Q[args.type.upper()]
    if wanted not in allowed:
        parser.error(f"the {args.policy} policy here knows {', '.join(sorted(t.name for t in allowed))}")
    library = ggml_library(args.package)

    started = time.monotonic()
    reader = GGUFReader(args.source)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    partial = args.out.with_name(args.out.name + ".part")
    writer = GGUFWriter(partial, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in (
            "general.architecture",
            "general.file_type",
            "general.quantization_version",
        ):
            continue
        kind = field.types[0]
        writer.add_key_value(
            field.name, field.contents(), kind, sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None
        )
    writer.add_uint32("general.quantization_version", 2)
    if args.policy == "qwentts":
        writer.add_string("general.file_type", wanted.name)  # quantize.cpp writes the variant's name
    else:
        writer.add_uint32("general.file_type", CRISPASR_FILE_TYPE[wanted])

    counts: dict = {}
    for tensor in reader.tensors:
        source = Q(tensor.tensor_type)
        shape = tuple(int(size) for size in reversed(tensor.shape.tolist()))  # numpy order
        target = choose(tensor.name, shape, source, arch, wanted)
        if target is None or target == source:
            target = source
            if source in (Q.F32, Q.F16):
                writer.add_tensor(tensor.name, np.ascontiguousarray(tensor.data).reshape(shape))
            else:
                writer.add_tensor(tensor.name, np.ascontiguousarray(tensor.data), raw_dtype=source)
        else:
            values = np.ascontiguousarray(np.asarray(tensor.data).reshape(shape), dtype=np.float32)
            if target == Q.F16:
                writer.add_tensor(tensor.name, values.astype(np.float16))
            else:
                writer.add_tensor(tensor.name, quantize_rows(library, values, target), raw_dtype=target)
        counts[target.name] = counts.get(target.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, args.out)
    size = args.out.stat().st_size / 1e6
    print(f"{args.out}: {size:.0f} MB, tensors {counts} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
