"""A model's memory moved to file pages (shared/file_pages.py), and the memory-pressure reading of the idle
policy: real mappings, real fbgemm packing, real /proc figures of this process."""

from __future__ import annotations

import gc

import pytest
import torch

from shared import idle_policy
from shared.devices import trim_host_memory
from shared.file_pages import FilePages, anonymous_mib, mappings, record_allocations
from shared.quantize import _fbgemm_reduce_range, _packer, _prepack, int8_product

MiB = 1 << 20


def mapped_from(tensor) -> str:
    pointer = tensor.untyped_storage().data_ptr()
    return next(m.path for m in mappings() if m.start <= pointer < m.end)


def test_tensors_move_to_file_pages_and_leave_memory(tmp_path):
    weight = torch.nn.Parameter(torch.randn(64 * 1024, 256), requires_grad=False)  # 64 MiB, anonymous
    rows = weight[100:200]  # another tensor on the same storage
    small = torch.randn(10)
    expected, expected_rows = weight.clone(), rows.clone()
    assert mapped_from(weight) in ("", "[heap]")
    anonymous_before, _ = anonymous_mib()
    pages = FilePages(tmp_path)
    assert list(tmp_path.iterdir()) == []  # unlinked at once: nothing is left behind, however the worker ends
    moved = pages.adopt_tensors([weight, rows, small])
    assert moved == 64 * MiB and pages.bytes == 64 * MiB
    assert ".wyoming-qwen-pages-" in mapped_from(weight) and ".wyoming-qwen-pages-" in mapped_from(rows)
    assert torch.equal(weight, expected) and torch.equal(rows, expected_rows)
    assert mapped_from(small) in ("", "[heap]")  # below MIN_BYTES
    trim_host_memory()  # freed, the original may still sit in malloc's heap
    anonymous_after, file_backed = anonymous_mib()
    assert anonymous_before - anonymous_after > 56  # the anonymous original is freed
    assert pages.release() == 64 * MiB
    assert file_backed - anonymous_mib()[1] > 56  # and the file's pages left the process
    assert torch.equal(weight, expected)  # faulted back in from the page cache
    assert pages.adopt_tensors([weight]) == 0  # already file pages


def test_release_keeps_a_page_written_since(tmp_path):
    weight = torch.zeros(4 * MiB // 4)
    pages = FilePages(tmp_path)
    pages.adopt_tensors([weight])
    weight[123] = 7.0  # a private copy of that page (MAP_PRIVATE)
    assert pages.release() == 0
    assert weight[123] == 7.0 and weight.sum() == 7.0


@pytest.mark.skipif(_fbgemm_reduce_range() is None, reason="needs fbgemm (x86); ARM runs int_mm without packing")
def test_packed_weights_move_to_file_pages_where_fbgemm_reads_them(tmp_path):
    torch.manual_seed(0)
    weights = [torch.randint(-127, 128, (2048, 1024), dtype=torch.int8) for _ in range(8)]  # 16 MiB
    scale = torch.rand(2048) / 100 + 1e-3
    rows = torch.randn(3, 1024)
    ranges = []
    anonymous_before, _ = anonymous_mib()
    with record_allocations(ranges):  # on the packing threads, as shared.quantize packs
        packed = list(_packer().map(_prepack, weights, [scale] * len(weights)))
    recorded = sum(end - start for start, end in ranges)
    # In a fresh process (a worker's first load) all eight are found. In a process that has packed and freed
    # many matrices before, as the test suite's, some are not (seen: 3 of 8), and stay anonymous memory:
    # safe, only not released in standby. Why is not known yet (a new mapping against a reserved range is
    # left out on purpose, file_pages.record_allocations; that does not explain all of them).
    assert 2 * MiB <= recorded <= 20 * MiB, recorded
    products = [int8_product(rows, None, None, p) for p in packed]

    def same_products() -> bool:
        return all(torch.equal(int8_product(rows, None, None, p), out) for p, out in zip(packed, products, strict=True))

    pages = FilePages(tmp_path)
    assert pages.adopt_ranges(ranges) == recorded
    gc.collect()
    anonymous_after, _ = anonymous_mib()
    left_out = max(0, 16 * MiB - recorded) / MiB  # stays anonymous (see above)
    assert anonymous_after - anonymous_before < left_out + 4  # the moved packed weights are no longer anonymous
    assert same_products()
    assert pages.release() == recorded
    assert same_products()
    packed.clear()  # fbgemm frees its buffers: our mappings go with them
    gc.collect()
    assert pages.release() == 0


def fake_system(tmp_path, meminfo="", pressure=None, cgroup=None):
    proc = tmp_path / "proc"
    (proc / "pressure").mkdir(parents=True)
    (proc / "meminfo").write_text(meminfo)
    if pressure is not None:
        (proc / "pressure" / "memory").write_text(pressure)
    group = tmp_path / "cgroup"
    group.mkdir()
    for name, text in (cgroup or {}).items():
        (group / name).write_text(text)
    return str(proc), str(group)


PLENTY = "MemTotal: 8000000 kB\nMemFree: 100000 kB\nMemAvailable: 4000000 kB\n"
CALM = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


@pytest.mark.parametrize(
    "meminfo, pressure, cgroup, short",
    [
        (PLENTY, CALM, None, None),
        (PLENTY, None, None, None),  # no pressure information at all
        ("MemTotal: 8000000 kB\nMemAvailable: 300000 kB\n", CALM, None, "293 MiB of 7812 MiB available"),
        (PLENTY, CALM.replace("some avg10=0.00", "some avg10=23.50"), None, "stalled on memory 24%"),
        # a container with a memory limit: its own figures count, not the host's
        (PLENTY, CALM, {"memory.max": str(1 << 30), "memory.current": str((1 << 30) - (20 << 20))}, "20 MiB of"),
        (PLENTY, CALM, {"memory.max": "max", "memory.pressure": CALM.replace("avg10=0.00", "avg10=50.00")}, "50%"),
    ],
)
def test_memory_pressure(tmp_path, monkeypatch, meminfo, pressure, cgroup, short):
    proc, group = fake_system(tmp_path, meminfo, pressure, cgroup)
    monkeypatch.setattr(idle_policy, "PROC", proc)
    monkeypatch.setattr(idle_policy, "CGROUP", group)
    found = idle_policy.memory_pressure()
    if short is None:
        assert found is None
    else:
        assert found is not None and short in found, found
