"""Device and dtype choice. `cuda_present` answers without importing torch, so `describe` can name the
model that `--model auto` will load before anything heavy is imported."""

from __future__ import annotations

import glob
import os
from typing import Optional


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
    """torch dtype for `--dtype`. auto: float32 on a CPU; on a GPU bfloat16 where it computes it natively
    (compute capability 8.0, Ampere, and newer), else float16. Older GPUs (Turing, Pascal) only emulate
    bfloat16, several times slower, or not at all."""
    import torch

    if dtype == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if native_bfloat16(device) else torch.float16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def native_bfloat16(device: str) -> bool:
    import torch

    major, _minor = torch.cuda.get_device_capability(device)
    return major >= 8


def load_pretrained(from_pretrained, path, device: str, dtype, attention: Optional[str] = None, **extra):
    """`from_pretrained` of either Qwen package, on `device` in `dtype`, with `attention` (default: the
    choice below), passed explicitly so a checkpoint whose config names flash-attention still loads
    without it. Returns the model and a description for the engine's log line."""
    import time

    attention = attention or attention_implementation(device, dtype)
    started = time.monotonic()
    model = from_pretrained(str(path), dtype=dtype, device_map=device, attn_implementation=attention, **extra)
    precision = str(dtype).replace("torch.", "")
    loaded = f"from {path} on {device} ({precision}, attention {attention}) in {time.monotonic() - started:.2f} s"
    return model, loaded


def attention_implementation(device: str, dtype) -> str:
    """flash_attention_2 where the flash-attn package is installed and can run (a CUDA device, half
    precision), else PyTorch's sdpa. Both Qwen packages accept either; the ASR encoder's 8-second
    windows are kept on both (see wyoming_qwen_asr.engine.apply_encoder_windows)."""
    import importlib.util

    import torch

    if (
        device.startswith("cuda")
        and dtype in (torch.float16, torch.bfloat16)
        and importlib.util.find_spec("flash_attn") is not None
    ):
        return "flash_attention_2"
    return "sdpa"


def free_accelerator_memory() -> None:
    """Give back cached GPU memory after a model was dropped (the CUDA context itself stays), and the
    host memory malloc keeps."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is always there where models load
        torch = None
    trim_host_memory()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def trim_host_memory() -> None:
    """Hand back the freed memory that malloc keeps for later allocations. A request's activations and
    caches are freed when it ends, but malloc keeps most of them (600 MiB after one sentence of the real
    0.6B TTS on a CPU); handing them back takes a quarter of a second, and the next request pays a few
    page faults instead."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
