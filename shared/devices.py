"""Device and dtype choice. `cuda_present` answers without importing torch, so `describe` can name the
model that `--model auto` will load before anything heavy is imported."""

from __future__ import annotations

import glob
import os


def cuda_present() -> bool:
    """True when an NVIDIA GPU is visible to this process (checked without importing torch)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*")) or bool(glob.glob("/proc/driver/nvidia/gpus/*"))


def wants_cuda(device: str) -> bool:
    if device == "auto":
        return cuda_present()
    return device.startswith("cuda")


def resolve_device(device: str) -> str:
    """Concrete torch device for `--device`. Imports torch: call it only where a model loads."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"--device {device} was asked for, but torch sees no CUDA device "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). Use --device cpu."
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"Unknown --device {device!r}: use auto, cpu, cuda or cuda:N")
    return "cuda:0" if device == "cuda" else device


def resolve_dtype(dtype: str, device: str):
    """torch dtype for `--dtype` (auto: bfloat16 on CUDA, float32 on CPU)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def free_accelerator_memory() -> None:
    """Give back cached GPU memory after a model was dropped (the CUDA context itself stays)."""
    import gc

    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is always there where models load
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
