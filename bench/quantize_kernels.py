"""Which int8 kernel: the candidates side by side on a stack of Qwen3 MLP blocks at the 0.6B widths.

Prints, for 1 row (one decode step) and 100 rows (a prefill), each candidate's time as a ratio to
float32 and its relative error. `shared/quantize.py` uses the fbgemm one where it works, else `_int_mm`;
its docstring says why.
torchao's config is included only where torchao is installed (the project does not install it).

    script/bench quantize-kernels [--blocks 8] [--repeats 30]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from shared.quantize import Int8Linear, quantize_int8  # noqa: E402


class Block(nn.Module):
    """A Qwen3 MLP (its names, so `quantize_int8` fuses gate_proj and up_proj as in the models)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(1024, 3072, bias=False)
        self.up_proj = nn.Linear(1024, 3072, bias=False)
        self.down_proj = nn.Linear(3072, 1024, bias=False)

    def forward(self, x):
        return x + self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class WeightOnlyInt8(nn.Module):
    """int8 weights, float activations: `aten._weight_int8pack_mm`."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.scale = weight.abs().amax(dim=1) / 127
        self.weight = torch.round(weight / self.scale[:, None]).to(torch.int8)

    def forward(self, x):
        out = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.weight, self.scale)
        return out.reshape(*x.shape[:-1], -1)


def ours(model: nn.Module, kernel: str = "auto") -> nn.Module:
    """`quantize_int8` as the servers run it, with its CPU kernel chosen (auto: fbgemm where it works)."""
    from shared import quantize

    model = copy.deepcopy(model)
    os.environ["WYOMING_QWEN_INT8_KERNEL"] = kernel
    quantize._fbgemm_reduce_range.cache_clear()
    try:
        quantize_int8([model], "the MLP blocks")
    finally:
        del os.environ["WYOMING_QWEN_INT8_KERNEL"]
        quantize._fbgemm_reduce_range.cache_clear()
    return model


def replaced(model: nn.Module, layer) -> nn.Module:
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, layer(child))
    return model


@torch.inference_mode()
def seconds(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    model(x)
    started = time.perf_counter()
    for _ in range(repeats):
        model(x)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # the deprecated candidate warns, as it should
    torch.manual_seed(0)
    model = nn.Sequential(*[Block() for _ in range(args.blocks)]).eval()
    candidates = {
        "float32": model,
        "torch._int_mm, per-token activations, unfused": replaced(model, Int8Linear),
        "torch._int_mm, gate/up fused": ours(model, "int_mm"),
        "fbgemm packed, per-row quantized, gate/up fused (ours)": ours(model),
        "aten._weight_int8pack_mm (weight-only)": replaced(model, WeightOnlyInt8),
        "torch.ao quantize_dynamic (deprecated)": torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8
        ),
    }
    if importlib.util.find_spec("torchao") is not None:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        torchao_model = copy.deepcopy(model)
        quantize_(torchao_model, Int8DynamicActivationInt8WeightConfig())
        candidates["torchao int8 dynamic (eager)"] = torchao_model
    print(f"{args.blocks} MLP blocks 1024 -> 2 x 3072 -> 1024, torch threads {torch.get_num_threads()}")
    for rows in (1, 100):
        x = torch.randn(1, rows, 1024)
        base = seconds(model, x, args.repeats)
        with torch.inference_mode():
            reference = model(x)
        for name, candidate in candidates.items():
            ratio = seconds(candidate, x, args.repeats) / base
            with torch.inference_mode():
                error = float((candidate(x) - reference).norm() / reference.norm())
            print(f"  {rows:3d} rows  {name:52s} time {ratio:5.2f} x float32, relative error {error:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
