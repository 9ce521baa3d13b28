"""The seam between model code and CUDA-only primitives (shared/graphs.py): the strict eager stand-in refuses
what a real capture or replay would get wrong, and the CUDA path's calls run here against a fake GPU."""

from __future__ import annotations

import contextlib

import pytest
import torch

from shared import graphs
from shared.graphs import CudaGraphs, EagerGraphs, GraphCaptureError, capture_all, runtime_for


def test_the_device_picks_the_runtime():
    assert isinstance(runtime_for("cpu"), EagerGraphs)
    assert isinstance(runtime_for(torch.device("cpu")), EagerGraphs)
    cuda = runtime_for("cuda:0")  # nothing touches CUDA until a capture
    assert isinstance(cuda, CudaGraphs) and cuda.device == torch.device("cuda:0")


def test_the_stand_in_runs_warm_ups_a_capture_and_each_replay():
    calls = []
    buffer = torch.zeros(3)

    def step():
        calls.append(1)
        buffer.add_(1)

    graph = EagerGraphs().capture(step, warmup_runs=2)
    assert len(calls) == 3  # two warm-ups, then the capture, as on CUDA
    graph.replay()
    graph.replay()
    assert len(calls) == 5 and torch.equal(buffer, torch.full((3,), 5.0))


def test_replays_run_in_the_capture_s_inference_mode():
    """A step captured in inference mode updates inference tensors in place: on a GPU a replay does that
    whatever the mode of its caller, so the stand-in must too."""
    with torch.inference_mode():
        cache = torch.zeros(4)

        def step():
            cache.add_(1)

        graph = EagerGraphs().capture(step, warmup_runs=0)
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        cache.zero_()  # the very mistake of the first GPU run, outside any graph (it errs after zeroing)
    graph.replay()  # outside inference mode: fine, as on a GPU
    assert cache.tolist() == [1.0] * 4


def test_a_host_read_while_capturing_is_refused():
    flag = torch.ones(1)

    def step():
        if flag.item() > 0:  # a device sync: CUDA fails such a capture
            flag.add_(1)

    with pytest.raises(GraphCaptureError, match="_local_scalar_dense"):
        EagerGraphs().capture(step, warmup_runs=1)


def test_a_tensor_from_python_data_while_capturing_is_refused():
    out = torch.zeros(2)

    def step():
        out.add_(torch.tensor([1.0, 2.0]))  # a host-to-device copy on a GPU

    with pytest.raises(GraphCaptureError, match="from Python data"):
        EagerGraphs().capture(step, warmup_runs=0)


def test_a_replay_that_takes_another_branch_is_refused():
    state = {"long": False}
    buffer = torch.zeros(2)

    def step():
        if state["long"]:  # frozen at capture in a real graph
            buffer.mul_(2)
        buffer.add_(1)

    graph = EagerGraphs().capture(step)
    graph.replay()
    state["long"] = True
    with pytest.raises(GraphCaptureError, match="other work than the capture"):
        graph.replay()


def test_a_replay_that_reads_a_fresh_tensor_is_refused():
    """A real graph reads the addresses it captured: handing a step a new tensor leaves the graph reading the
    old one."""
    out = torch.zeros(2)
    inputs = {"x": torch.ones(2)}

    def step():
        out.copy_(inputs["x"] * 2)

    graph = EagerGraphs().capture(step)
    inputs["x"].fill_(3)  # written in place: what a graph sees
    graph.replay()
    assert out.tolist() == [6.0, 6.0]
    inputs["x"] = torch.full((2,), 5.0)  # a new tensor: a graph would not see it
    with pytest.raises(GraphCaptureError, match="read another tensor"):
        graph.replay()


def test_a_replay_with_another_scalar_is_refused():
    settings = {"temperature": 0.9}
    out = torch.ones(2)

    def step():
        out.div_(settings["temperature"])  # baked into the captured kernel

    graph = EagerGraphs().capture(step)
    settings["temperature"] = 0.5
    with pytest.raises(GraphCaptureError, match="instead of"):
        graph.replay()


def test_capture_all_shares_one_pool():
    pools = []

    class Recording(EagerGraphs):
        def capture(self, fn, pool=None, warmup_runs=2):
            pools.append(pool)
            graph = super().capture(fn, pool, warmup_runs)
            graph.pool = lambda: "the first graph's pool"
            return graph

    captured = capture_all(Recording(), [lambda: None, lambda: None, lambda: None])
    assert len(captured) == 3
    assert pools == [None, "the first graph's pool", "the first graph's pool"]


def test_the_stand_in_side_stream_and_synchronize_do_nothing():
    runtime = EagerGraphs()
    with runtime.side_stream():
        pass
    runtime.synchronize()


class FakeCuda:
    """What `CudaGraphs` calls of torch.cuda, recorded and run eagerly: the GPU, mocked."""

    def __init__(self):
        self.log = []
        self.capturing = False

    def Stream(self, device=None):
        fake = self

        class Stream:
            def wait_stream(self, other):
                fake.log.append(("wait", self.name, other.name))

        stream = Stream()
        stream.name = "side"
        return stream

    def current_stream(self, device=None):
        stream = self.Stream(device)
        stream.name = "main"
        return stream

    @contextlib.contextmanager
    def stream(self, stream):
        self.log.append(("stream", stream.name))
        yield

    def CUDAGraph(self):
        fake = self

        class CUDAGraph:
            def __init__(self):
                self.fn = None

            def replay(self):
                fake.log.append("replay")
                self.fn()

            def pool(self):
                return ("pool", id(self))

        return CUDAGraph()

    @contextlib.contextmanager
    def graph(self, graph, pool=None):
        self.log.append(("capture", pool))
        self.capturing = graph
        yield
        self.capturing = False

    def synchronize(self, device=None):
        self.log.append(("synchronize", str(device)))


def test_the_cuda_runtime_warms_up_on_a_side_stream_then_captures(monkeypatch):
    fake = FakeCuda()
    for name in ("Stream", "current_stream", "stream", "CUDAGraph", "graph", "synchronize"):
        monkeypatch.setattr(graphs.torch.cuda, name, getattr(fake, name))
    runs = []

    def step():
        runs.append("capturing" if fake.capturing else "eager")
        if fake.capturing:
            fake.capturing.fn = step

    runtime = CudaGraphs(torch.device("cuda:0"))
    graph = runtime.capture(step, pool="shared", warmup_runs=2)
    assert runs == ["eager", "eager", "capturing"]
    assert fake.log == [("wait", "side", "main"), ("stream", "side"), ("wait", "main", "side"), ("capture", "shared")]
    graph.replay()
    assert fake.log[-1] == "replay" and runs[-1] == "eager"
    assert graph.pool()[0] == "pool"
    runtime.synchronize()
    assert fake.log[-1] == ("synchronize", "cuda:0")
    with runtime.side_stream():
        pass
    assert fake.log[-1] == ("stream", "side")
