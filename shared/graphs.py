"""The one seam between model code and CUDA-only primitives: graph capture and replay, side streams, graph
memory pools and device synchronisation.

`runtime_for(device)` gives `CudaGraphs` on a CUDA device and `EagerGraphs` anywhere else. Both take the
same calls, so everything around a captured step (the static buffers, the caches and their resets, the
re-use for the next sentence, the fall-backs) runs in the CPU tests exactly as it runs on a GPU; only the
few lines of `CudaGraphs` need one.

`EagerGraphs` is a strict stand-in, not a no-op. It runs the captured callable once at capture (after the
same warm-up runs) and again at each replay, under the inference-mode and grad state of the capture, as a
replayed graph does. It refuses what a real capture or replay would get wrong:
- a host read while capturing (`.item()`, `int(tensor)`, `nonzero`...): CUDA fails the capture;
- a replay whose operators, shapes or scalar arguments differ from the capture's, or that reads a tensor
  the capture did not read: a real graph replays the captured kernels on the captured addresses, so Python
  that takes another branch, or hands in a fresh tensor, silently computes something else on a GPU.
Unlike CUDA, whose capture only records, the stand-in's capture computes; callers reset what a capture
touched (caches, counters) before real use, as they must on a GPU for the warm-up runs anyway.
"""

from __future__ import annotations

import contextlib
from typing import Callable, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

WARMUP_RUNS = 2  # runs before a capture: lazy initialisation (cuBLAS handles, caches) must not be captured

# operators that read a tensor's value on the host (a device sync) or give a shape that depends on values,
# and that make a tensor from Python data (on a GPU a copy from the host, which a capture refuses)
HOST_READS = frozenset({"_local_scalar_dense", "nonzero", "masked_select", "unique_consecutive", "_unique2", "item"})
HOST_DATA = frozenset({"lift_fresh", "lift_fresh_copy"})


class GraphCaptureError(RuntimeError):
    """The callable cannot be captured as a graph, or its replay would not compute what it computes."""


class Graph:
    """A captured callable: `replay()` runs its work again, on the buffers it used when captured."""

    def replay(self) -> None:  # pragma: no cover - both runtimes override it
        raise NotImplementedError

    def pool(self):
        """A memory pool handle for the next capture to share (graphs replayed one after another may)."""
        return None


def runtime_for(device) -> "GraphRuntime":
    return CudaGraphs(torch.device(device)) if torch.device(device).type == "cuda" else EagerGraphs()


class GraphRuntime:
    name = "base"

    def capture(self, fn: Callable[[], object], pool=None, warmup_runs: int = WARMUP_RUNS) -> Graph:
        raise NotImplementedError  # pragma: no cover

    def side_stream(self):
        """A context in which work runs on a stream of its own (a no-op without CUDA)."""
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait for the device to finish its queued work (a no-op without CUDA)."""


# -- CUDA -----------------------------------------------------------------------------------------


class _CudaGraph(Graph):
    def __init__(self, graph) -> None:
        self._graph = graph

    def replay(self) -> None:
        self._graph.replay()

    def pool(self):
        return self._graph.pool()


class CudaGraphs(GraphRuntime):
    name = "cuda"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def capture(self, fn: Callable[[], object], pool=None, warmup_runs: int = WARMUP_RUNS) -> Graph:
        # warm-up on a side stream, as PyTorch requires before capturing
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(warmup_runs):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            fn()
        return _CudaGraph(graph)

    def side_stream(self):
        return torch.cuda.stream(torch.cuda.Stream(self.device))

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


# -- the eager stand-in -----------------------------------------------------------------------------


class _Trace(TorchDispatchMode):
    """Every operator a call runs: its name, argument shapes and scalars, and which tensors it reads that
    the call did not make itself (by storage address). `strict_host_reads` raises on a host read."""

    def __init__(self, strict_host_reads: bool) -> None:
        super().__init__()
        self.strict_host_reads = strict_host_reads
        self.ops: List[Tuple] = []
        self.made: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if self.strict_host_reads and name in HOST_READS:
            raise GraphCaptureError(
                f"aten::{name} reads a tensor's value on the host while capturing; a CUDA graph cannot capture "
                "that (it would fail with 'operation not permitted when stream is capturing')"
            )
        if self.strict_host_reads and name in HOST_DATA:
            raise GraphCaptureError(
                f"aten::{name} makes a tensor from Python data while capturing; on a GPU that is a copy from the "
                "host, which a CUDA graph cannot capture (and would not repeat): keep such data in a buffer"
            )
        read = {_storage(t) for t in _tensors((args, kwargs))}
        self.ops.append((name, _signature(args), _signature(kwargs), tuple(sorted(read - self.made))))
        out = func(*args, **kwargs)
        self.made.update({_storage(t) for t in _tensors(out)} - read)
        return out


def _storage(tensor: torch.Tensor) -> int:
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (meta, some wrappers)
        return 0


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def _signature(tree):
    if isinstance(tree, torch.Tensor):
        return ("tensor", tuple(tree.shape), tree.dtype, tree.device.type)
    if isinstance(tree, (list, tuple)):
        return tuple(_signature(item) for item in tree)
    if isinstance(tree, dict):
        return tuple((key, _signature(value)) for key, value in sorted(tree.items()))
    if isinstance(tree, torch.ScriptObject):  # packed weights (fbgemm's int8): a new wrapper on every call
        return ("script object", str(tree._type()))
    return repr(tree)


class _EagerGraph(Graph):
    def __init__(self, fn: Callable[[], object], inference: bool, grad: bool, ops: List[Tuple]) -> None:
        self._fn = fn
        self._inference = inference
        self._grad = grad
        self._ops = ops
        self.replays = 0

    def _modes(self):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode(self._inference))
        stack.enter_context(torch.set_grad_enabled(self._grad))
        return stack

    def replay(self) -> None:
        with self._modes(), _Trace(strict_host_reads=True) as trace:
            self._fn()
        self.replays += 1
        if trace.ops != self._ops:
            raise GraphCaptureError(
                f"replay {self.replays} ran other work than the capture ({_first_difference(self._ops, trace.ops)}): "
                "a CUDA graph would have replayed the captured kernels on the captured tensors instead"
            )


def _first_difference(expected: List[Tuple], got: List[Tuple]) -> str:
    for index, (a, b) in enumerate(zip(expected, got, strict=False)):
        if a != b:
            what = "read another tensor" if a[:3] == b[:3] else f"aten::{b[0]} {b[1]} instead of aten::{a[0]} {a[1]}"
            return f"operator {index}: {what}"
    return f"{len(got)} operators instead of {len(expected)}"


class EagerGraphs(GraphRuntime):
    """The stand-in without CUDA (see the module docstring)."""

    name = "eager"

    def __init__(self) -> None:
        self.captures = 0

    def capture(self, fn: Callable[[], object], pool=None, warmup_runs: int = WARMUP_RUNS) -> Graph:
        for _ in range(warmup_runs):
            fn()
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()
        with _Trace(strict_host_reads=True) as trace:
            fn()
        self.captures += 1
        return _EagerGraph(fn, inference, grad, trace.ops)


def capture_all(runtime: GraphRuntime, steps, pool: Optional[object] = None) -> List[Graph]:
    """Capture each callable of `steps` in order, sharing one memory pool (they replay one after another)."""
    graphs: List[Graph] = []
    for fn in steps:
        graph = runtime.capture(fn, pool=pool)
        pool = pool if pool is not None else graph.pool()
        graphs.append(graph)
    return graphs
