"""`--quantize int8`: the transformer decoders' linear layers in int8, for CPUs.

Each `nn.Linear` inside the given decoders is replaced by `Int8Linear`: symmetric int8 weights with one
scale per output channel, and activations quantized per token on the fly (symmetric int8, one scale per
row), multiplied with `torch._int_mm` (int8 x int8 -> int32), then rescaled. Rounding is deterministic,
so the same checkpoint always gives the same int8 model and streaming stays exact within a mode.
Embeddings, output heads, the audio encoder and the codec decoder stay in floating point.

Why not the others (`script/bench quantize-kernels`: 8 MLP blocks at the 0.6B widths on 2 cores,
time against float32 for one token / 100 tokens; the end-to-end figures of `script/bench quantize`
are in the README):
- `torch.ao.quantization.quantize_dynamic` (fbgemm): 0.13 / 0.17, but it and the quantized tensor
  types it needs are deprecated and will be removed from PyTorch;
- torchao's int8 dynamic-activation config: 1.45 / 0.39 in eager mode, and once installed,
  transformers imports it in every process (seconds of start-up, log noise);
- int8 weight-only (`_weight_int8pack_mm`): 2.0 / 28, slower than float32 on these CPUs;
- this: 0.32 / 0.16, relative error 0.85%.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

import torch
from torch import nn

_LOGGER = logging.getLogger(__name__)

MODES = ("auto", "none", "int8")


def resolve_quantize(mode: str, device: str) -> str:
    """auto: int8 on a CPU (int8 kernels there are several times faster), none on CUDA."""
    if mode == "auto":
        return "int8" if str(device).startswith("cpu") else "none"
    return mode


class Int8Linear(nn.Module):
    """A linear layer with per-output-channel int8 weights and per-token int8 activations."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_int8_t", quantized.t().contiguous())  # in x out, as _int_mm takes it
        self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        row_scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
        quantized = torch.round(rows / row_scale).to(torch.int8)
        count = quantized.shape[0]
        if quantized.is_cuda and count <= 16:  # the CUDA kernel wants more than 16 rows
            quantized = torch.cat([quantized, quantized.new_zeros(17 - count, self.in_features)])
        out = torch._int_mm(quantized, self.weight_int8_t)[:count].float() * row_scale * self.weight_scale
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(decoders: Iterable[nn.Module], what: str) -> int:
    """Replace every nn.Linear inside `decoders` by an Int8Linear; returns how many were replaced."""
    started = time.monotonic()
    count = 0
    for decoder in decoders:
        for parent in list(decoder.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, Int8Linear(child))
                    count += 1
    _LOGGER.info("Quantized %d linear layers of %s to int8 in %.2f s", count, what, time.monotonic() - started)
    return count
