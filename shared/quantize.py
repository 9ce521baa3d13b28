"""`--quantize int8`: the transformer decoders' linear layers in int8, for CPUs.

Each `nn.Linear` inside the given decoders is replaced by `Int8Linear`: symmetric int8 weights with one
scale per output channel, and activations quantized per token on the fly (symmetric int8, one scale per
row), multiplied as int8 x int8 with int32 sums (below: which kernel), then rescaled. Rounding is deterministic,
so the same checkpoint always gives the same int8 model and streaming stays exact within a mode.
Siblings that read the same input (q/k/v, gate/up) share one quantization and one product, with
bitwise the same outputs. Embeddings, the audio encoder and the codec decoder stay in floating point,
and so do the TTS heads (small). The ASR output head is int8 too: at 151,936 x 1,024 it cost more per
decode step than all 28 int8 layers together, and quantizing it moved the logit error of
`script/bench quantize` from 4.79% to 4.92% while the int8 ASR time fell from 2.53 s to 1.73 s.

Why not the others (`script/bench quantize-kernels`: 8 Qwen3 MLP blocks at the 0.6B widths on 2 cores,
time against float32 for one token / 100 tokens; the end-to-end figures of `script/bench quantize`
are in the README):
- `torch.ao.quantization.quantize_dynamic` (fbgemm): 0.13-0.14 / 0.16-0.17, but its module types are
  deprecated, and it quantizes activations per tensor (relative error 1.3% / 2.6% against our 0.8%);
- torchao's int8 dynamic-activation config: 1.45 / 0.39 in eager mode, and once installed,
  transformers imports it in every process (seconds of start-up, log noise);
- int8 weight-only (`_weight_int8pack_mm`): 1.6-1.9 / 28, slower than float32 on these CPUs;
- `_int_mm` alone: 0.18-0.22 / 0.17, relative error 0.78%.

So on a CPU the products run through fbgemm's packed int8 kernel (`quantized.linear_dynamic`), 1.5-2x as
fast as `_int_mm` for one row at the 0.6B widths (0.30 against 0.46 x float32 in one run of `script/bench
quantize-kernels`; about even at 100 rows; relative error 0.68% against 0.78%), from the same int8 weights
and scales (no quantized module types; the packed form holds the channel scales). fbgemm quantizes
activations per tensor: that is per row for one row (a decode step, which then costs one call and nothing
around it), and for several rows each is first divided by its largest magnitude, so that its quantization
is per row as ours is. Activations use the full 8-bit range where the CPU multiplies
without 16-bit saturation (probed at load; `_probe_fbgemm`), 7-bit where it does. Where fbgemm is missing
(a build without it, ARM, or a later PyTorch that dropped it), and on CUDA, `_int_mm` does it.
The price: fbgemm's packed form takes about twice the bytes of the int8 matrix, and packing takes 2-4 s
per 0.6B model (in the README). `--int8-kernel int_mm` (the launcher sets `WYOMING_QWEN_INT8_KERNEL`, as
`script/bench quantize-kernels` and the tests of both kernels do) keeps the lean one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

_LOGGER = logging.getLogger(__name__)

MODES = ("auto", "none", "int8")

# Projections that the Qwen3 decoder layers always call one after another on the same input.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def resolve_quantize(mode: str, device: str) -> str:
    """auto: int8 on a CPU (int8 kernels there are several times faster), none on CUDA."""
    if mode == "auto":
        return "int8" if str(device).startswith("cpu") else "none"
    return mode


def int8_product(rows: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, packed=None) -> torch.Tensor:
    """`rows` times the int8 `weight` (out x in, one scale per output channel), with the rows quantized per
    row: through fbgemm's `packed` form where there is one (it holds the channel scales), else `_int_mm`."""
    if packed is not None:
        if rows.shape[0] == 1:
            # fbgemm quantizes activations per tensor, which for one row is per row: nothing to do around
            # the call (the decode steps' case, where the few element-wise ops around each product cost
            # as much as the product)
            return torch.ops.quantized.linear_dynamic(rows, packed, _fbgemm_reduce_range())
        row_scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12)
        return torch.ops.quantized.linear_dynamic(rows / row_scale, packed, _fbgemm_reduce_range()).mul_(row_scale)
    row_scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(127.0)
    quantized = torch.round(rows / row_scale).to(torch.int8)
    count = quantized.shape[0]
    if quantized.is_cuda and count <= 16:  # the CUDA kernel wants more than 16 rows
        quantized = torch.cat([quantized, quantized.new_zeros(17 - count, quantized.shape[1])])
    # `weight.t()`, not a transposed copy: for one row the CPU kernel is then 1.4x faster on weights read
    # from memory, 3-4x on weights in cache; from 2 rows on the two layouts are about even
    return torch._int_mm(quantized, weight.t())[:count] * (row_scale * weight_scale)


class Int8Linear(nn.Module):
    """A linear layer with per-output-channel int8 weights and per-token int8 activations."""

    def __init__(self, linear: nn.Linear, stored: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        """stored: (int8 weight, scales) from the cache, so the float weight is never read; else computed."""
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if stored is None:
            weight = linear.weight.detach().float()
            scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        else:
            quantized, scale = stored
            # a copy: a view would keep the whole cache file mapped (and resident once packing read it)
            # long after the packed weights replaced the int8 ones
            scale = scale.clone()
        self.register_buffer("weight_int8", quantized)  # out x in, like nn.Linear
        self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.siblings: Optional[Siblings] = None
        self.packed = None  # fbgemm's form of weight_int8 (`pack_for_cpu`), which is then released

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no cast where there is nothing to cast: a decode step calls this hundreds of times a frame, and on
        # a CPU each operator call costs about as much as the arithmetic of a small one
        rows = x.reshape(-1, self.in_features)
        if rows.dtype != torch.float32:
            rows = rows.float()
        if self.siblings is None:
            out = int8_product(rows, self.weight_int8, self.weight_scale, self.packed)
        else:
            out = self.siblings.product(self, x, rows)
        if self.bias is not None:
            out = out + self.bias.float()
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        fused = "" if self.siblings is None else ", fused with its siblings"
        kernel = ", fbgemm" if self.packed is not None or getattr(self.siblings, "packed", None) is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8{fused}{kernel}"


class Siblings:
    """Int8 layers that read the same input (q/k/v, gate/up): one quantization and one product for all.

    Their weights and scales become row blocks of one int8 matrix and one scale vector. The first layer
    computes the whole product and the others take their columns of it when their input is the same tensor
    (on any other input they compute it anew); each output channel is its own dot product with its own
    scale, so the outputs are bitwise those of separate layers. Each layer still adds its own bias. The
    matrix is no buffer: quantize after moving the model to its device.
    """

    def __init__(self, layers: list[Int8Linear]) -> None:
        self.layers = layers
        self.weight = torch.cat([layer.weight_int8 for layer in layers])
        self.weight_scale = torch.cat([layer.weight_scale for layer in layers])
        self.columns: dict[Int8Linear, slice] = {}
        start = 0
        for layer in layers:
            self.columns[layer] = slice(start, start + layer.out_features)
            layer.weight_int8 = self.weight[self.columns[layer]]  # views: weights and scales are stored once
            layer.weight_scale = self.weight_scale[self.columns[layer]]
            layer.siblings = self
            start += layer.out_features
        self._input = self._product = None
        self.packed = None

    def product(self, layer: Int8Linear, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # the first layer always recomputes, so an input changed in place between two passes is never stale
        if layer is self.layers[0] or x is not self._input:
            self._product = int8_product(rows, self.weight, self.weight_scale, self.packed)
            self._input = x
        product = self._product[:, self.columns[layer]]
        if layer is self.layers[-1]:
            self._input = self._product = None  # hold no activations between passes
        return product


def pack_for_cpu(modules: Iterable[nn.Module], packed_ranges: Optional[list] = None) -> int:
    """Give every Int8Linear (or set of siblings) among `modules` on the CPU fbgemm's packed form of its
    weights now, and release the plain int8 copy; returns how many matrices were packed (0 where fbgemm is
    not to be used). packed_ranges: receives the address ranges of the packed buffers (shared/file_pages.py).
    A serving engine packs in the background instead (`KernelPacking`)."""
    if _fbgemm_reduce_range() is None:
        return 0
    unpacked = _unpacked_holders(modules)
    weights = [_plain_weight(holder) for holder in unpacked]
    scales = [holder.weight_scale for holder in unpacked]
    from .file_pages import record_allocations

    with record_allocations(packed_ranges if packed_ranges is not None else []):
        for holder, packed in zip(unpacked, _packer().map(_prepack, weights, scales), strict=True):
            holder.packed = packed
        del weights, scales
    for holder in unpacked:  # the plain weights are no longer read: free them
        _release_plain(holder)
    if unpacked:
        from .devices import free_accelerator_memory

        free_accelerator_memory()  # malloc keeps the freed copies otherwise: 450 MiB of the ASR model's RSS
    return len(unpacked)


class KernelPacking:
    """fbgemm packing off the critical path: a loaded model serves at once through `_int_mm` (which reads the
    int8 weights as cached, mapped from the file), and its matrices are packed one at a time between
    requests (`step`, on the inference thread, as low-priority jobs); each layer changes kernel when its
    matrix is packed. Both kernels compute the same per-row int8 products (results differ in rounding
    only: see `int8_product`), and the packing order is fixed, so a given request always sees the same."""

    def __init__(self, modules: Iterable[nn.Module], packed_ranges: Optional[list] = None) -> None:
        self.pending = _unpacked_holders(modules) if _fbgemm_reduce_range() is not None else []
        self.packed_ranges = packed_ranges if packed_ranges is not None else []
        self.count = len(self.pending)
        self.seconds = 0.0

    @property
    def done(self) -> bool:
        return not self.pending

    def step(self) -> bool:
        """Pack the next few matrices (about STEP_ELEMENTS weights, at least one matrix); returns whether
        any are left."""
        from .file_pages import record_allocations

        if not self.pending:
            return False
        started = time.monotonic()
        batch, elements = [], 0
        while self.pending and (not batch or elements < STEP_ELEMENTS):
            holder = self.pending.pop(0)
            batch.append(holder)
            elements += _plain_weight(holder).numel()
        weights = [_plain_weight(holder) for holder in batch]
        scales = [holder.weight_scale for holder in batch]
        with record_allocations(self.packed_ranges):
            for holder, packed in zip(batch, _packer().map(_prepack, weights, scales), strict=True):
                holder.packed = packed
        del weights, scales
        for holder in batch:
            _release_plain(holder)
        if not self.pending:
            from .devices import free_accelerator_memory

            free_accelerator_memory()
        self.seconds += time.monotonic() - started
        return bool(self.pending)


STEP_ELEMENTS = 32 << 20  # about 0.15 s of packing on 2 threads: the longest a request waits for a step


@lru_cache(maxsize=None)
def _packer() -> ThreadPoolExecutor:
    """The threads that pack, for every model of the process (packing is single-threaded and releases the
    GIL: one thread per compute thread). Threads of their own have malloc heaps of their own, which hold no
    free blocks the size of a matrix, so each packed matrix gets a mapping of its own, which
    `record_allocations` can find (on a thread that also runs inference, malloc reuses the blocks that
    inference freed, in the middle of its heap)."""
    return ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="int8-pack")


def _unpacked_holders(modules: Iterable[nn.Module]) -> list:
    """Each Int8Linear, or set of siblings, on the CPU among `modules` without a packed form, in module order."""
    holders = {}
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, Int8Linear) and layer.weight_int8.device.type == "cpu":
                holder = layer if layer.siblings is None else layer.siblings
                if holder.packed is None:
                    holders[id(holder)] = holder
    return list(holders.values())


def _plain_weight(holder) -> torch.Tensor:
    return holder.weight_int8 if isinstance(holder, Int8Linear) else holder.weight


def _release_plain(holder) -> None:
    """The plain int8 weights of a packed holder are no longer read: free them."""
    layers = [holder] if isinstance(holder, Int8Linear) else holder.layers
    if not isinstance(holder, Int8Linear):
        holder.weight = _RELEASED
    for layer in layers:
        layer.weight_int8 = _RELEASED


_RELEASED = torch.empty(0, dtype=torch.int8)


def _prepack(weight: torch.Tensor, scale: Optional[torch.Tensor] = None):
    """fbgemm's packed form of an int8 matrix (out x in) with its per-channel scales (default: 1)."""
    channels = weight.shape[0]
    scale = torch.ones(channels, dtype=torch.double) if scale is None else scale.double()
    with warnings.catch_warnings():  # the quantized tensor type is deprecated; it lives only for this call
        warnings.simplefilter("ignore")
        quantized = torch._make_per_channel_quantized_tensor(
            weight.contiguous(), scale, torch.zeros(channels, dtype=torch.long), 0
        )
        return torch.ops.quantized.linear_prepack(quantized, None)


@lru_cache(maxsize=None)
def _fbgemm_reduce_range() -> Optional[bool]:
    """Whether fbgemm must quantize activations to 7 bits on this CPU (False: 8 bits are exact); None
    where fbgemm is not to be used."""
    if os.environ.get("WYOMING_QWEN_INT8_KERNEL", "fbgemm") == "int_mm":  # --int8-kernel int_mm
        return None
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        _LOGGER.info("int8 products: torch._int_mm (this PyTorch has no fbgemm)")
        return None
    try:
        for reduce_range in (False, True):
            if _probe_fbgemm(reduce_range):
                _LOGGER.debug("int8 products: fbgemm, %d-bit activations", 7 if reduce_range else 8)
                return reduce_range
    except (RuntimeError, AttributeError) as err:  # a PyTorch that dropped the operators
        _LOGGER.info("int8 products: torch._int_mm (fbgemm failed: %s)", err)
        return None
    _LOGGER.info("int8 products: torch._int_mm (fbgemm's products were wrong in the probe)")
    return None


def _probe_fbgemm(reduce_range: bool) -> bool:
    """fbgemm's product of the largest activations with the largest weights is exact: CPUs without VNNI
    sum pairs of 8-bit products in 16 bits, which saturate at full range (why fbgemm has reduce_range)."""
    columns = 64
    weight = torch.full((8, columns), 127, dtype=torch.int8)
    weight[1::2] = -127
    rows = torch.ones(2, columns)
    rows[1] = -1
    with torch.inference_mode():
        product = torch.ops.quantized.linear_dynamic(rows, _prepack(weight), reduce_range)
    expected = rows @ weight.float().t()
    return bool(torch.allclose(product, expected, rtol=0.02))


def fuse_siblings(parent: nn.Module) -> int:
    """Fuse each set of SIBLINGS among `parent`'s Int8Linear children; returns how many sets."""
    fused = 0
    for names in SIBLINGS:
        layers = [getattr(parent, name, None) for name in names]
        if all(isinstance(layer, Int8Linear) and layer.siblings is None for layer in layers):
            if len({layer.in_features for layer in layers}) == 1:
                Siblings(layers)
                fused += 1
    return fused


def quantize_int8(
    decoders: Iterable[nn.Module],
    what: str,
    heads: Iterable[Tuple[nn.Module, str]] = (),
    cache: Optional[Path] = None,
    packed_ranges: Optional[list] = None,
    pack: bool = True,
) -> int:
    """Replace every nn.Linear inside `decoders`, and each `(parent, name)` head, by an Int8Linear and fuse
    the siblings; returns how many layers were replaced. cache: a safetensors file (`cache_file`) that
    holds the int8 weights: read when it fits, else written for the next start. packed_ranges: see
    `pack_for_cpu`. pack: False leaves the packing to the caller (`KernelPacking`)."""
    started = time.monotonic()
    decoders = list(decoders)
    heads = list(heads)
    targets = _targets(decoders, heads)
    stored = _read_cache(cache, targets)
    for key, parent, name, linear in targets:
        layer = Int8Linear(linear, None if stored is None else (stored[f"{key}.int8"], stored[f"{key}.scale"]))
        setattr(parent, name, layer)
    if cache is not None and stored is None:
        _write_cache(cache, {key: getattr(parent, name) for key, parent, name, _ in targets})
    fused = sum(fuse_siblings(parent) for decoder in decoders for parent in decoder.modules())
    packed = pack_for_cpu(decoders + [parent for parent, _ in heads], packed_ranges) if pack else 0
    if packed:
        kernels = "fbgemm kernels"
    elif pack or _fbgemm_reduce_range() is None:
        kernels = "torch._int_mm"
    else:
        kernels = "fbgemm kernels once packed in the background, torch._int_mm until then"
    _LOGGER.info(
        "Quantized %d linear layers of %s to int8 (%d sets of siblings fused, %s%s) in %.2f s",
        len(targets),
        what,
        fused,
        kernels,
        "" if cache is None else (", read from the cache" if stored is not None else ", cache written"),
        time.monotonic() - started,
    )
    return len(targets)


def _targets(decoders: List[nn.Module], heads: Iterable[Tuple[nn.Module, str]]) -> list:
    """(stable key, parent, attribute name, nn.Linear) for every layer to quantize."""
    targets = [(f"head{index}", parent, name, getattr(parent, name)) for index, (parent, name) in enumerate(heads)]
    for index, decoder in enumerate(decoders):
        for path, parent in decoder.named_modules():
            for name, child in parent.named_children():
                if type(child) is nn.Linear:
                    targets.append((f"{index}.{path}.{name}".replace("..", "."), parent, name, child))
    return targets


# -- the cache of int8 weights (a cold start reads a quarter of the bytes and computes nothing) ----------

CACHE_FORMAT = "1"  # part of the key: a change in how weights are quantized makes old files unusable


def cache_file(model_dir: Path, fallback: Optional[Path] = None) -> Optional[Path]:
    """Where the int8 weights of the model in `model_dir` are cached, keyed by its revision and its weight
    files' names, sizes and times. A downloaded model's go in its repository folder of the Hugging Face
    cache (`int8-<revision>-<key>.safetensors`; `huggingface-cli delete-cache` removes them with the
    model); a local folder's go beside it. Where that place cannot be written (a model mounted read-only),
    they go to `fallback` (default: `wyoming-qwen-int8` in the Hugging Face cache, the data volume in
    Docker), named after the model folder's path, and the log says so. None, with a warning, when neither
    can be written: the weights are then quantized again at every load."""
    model_dir = Path(model_dir)
    if model_dir.parent.name == "snapshots":  # <data dir>/models--Qwen--X/snapshots/<revision>
        folder, stem = model_dir.parent.parent, f"int8-{model_dir.name}"
    else:
        folder, stem = model_dir.parent, f"{model_dir.name}.int8"
    if not _writable(folder):
        if fallback is None:
            from .hub_cache import default_hub_cache

            fallback = default_hub_cache() / "wyoming-qwen-int8"
        with contextlib.suppress(OSError):
            fallback.mkdir(parents=True, exist_ok=True)
        if not _writable(fallback):
            _LOGGER.warning(
                "Neither %s nor %s can be written: the int8 weights of %s are quantized again at every load",
                folder,
                fallback,
                model_dir,
            )
            return None
        where = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:8]
        folder, stem = fallback, f"{stem}-{where}"
        _LOGGER.info("%s cannot be written; the int8 cache of %s goes to %s", model_dir.parent, model_dir, fallback)
    fingerprint = hashlib.sha256(CACHE_FORMAT.encode())
    for path in sorted(model_dir.glob("*.safetensors")):
        stat = path.stat()  # follows the hub cache's symlinks to the blobs
        fingerprint.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return folder / f"{stem}-{fingerprint.hexdigest()[:16]}.safetensors"


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def _read_cache(cache: Optional[Path], targets: list) -> Optional[Dict[str, torch.Tensor]]:
    if cache is None or not cache.exists():
        return None
    from safetensors.torch import load_file

    try:
        stored = load_file(str(cache))
        for key, _, _, linear in targets:
            weight, scale = stored[f"{key}.int8"], stored[f"{key}.scale"]
            if weight.shape != linear.weight.shape or scale.shape != (linear.out_features,):
                raise ValueError(f"{key} has shape {tuple(weight.shape)}")
    except Exception as err:  # a bad cache costs a recomputation, never the load
        _LOGGER.warning("Ignoring the int8 cache %s (%s); quantizing again", cache, err)
        return None
    return stored


def _write_cache(cache: Path, layers: Dict[str, Int8Linear]) -> None:
    """Atomically (temporary file, then rename); old files of the same model are removed."""
    from safetensors.torch import save_file

    tensors = {}
    for key, layer in layers.items():
        tensors[f"{key}.int8"] = layer.weight_int8.contiguous()
        tensors[f"{key}.scale"] = layer.weight_scale.contiguous()
    temporary = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(temporary))
        os.replace(temporary, cache)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        _LOGGER.warning("Could not write the int8 cache %s: %s", cache, err)
        return
    stem = cache.name.rsplit("-", 1)[0]  # the fingerprint has no dash
    for old in cache.parent.glob(f"{stem}-*.safetensors"):
        if old != cache:
            old.unlink(missing_ok=True)
