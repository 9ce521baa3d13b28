"""`shared/devices.py`: the device, dtype and memory choices that only differ on a GPU. The GPU is mocked
(there is none here); what is asserted is the choice each answer leads to."""

from __future__ import annotations

import pytest
import torch

from shared import devices


def _gpu_files(monkeypatch, present: bool):
    monkeypatch.setattr(devices.glob, "glob", lambda pattern: ["/dev/nvidia0"] if present else [])


@pytest.mark.parametrize(
    ("visible", "files", "expected"),
    [(None, True, True), (None, False, False), ("", True, False), ("-1", True, False), ("0", True, True)],
)
def test_cuda_present_reads_visible_devices_and_the_driver_files(monkeypatch, visible, files, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    _gpu_files(monkeypatch, files)
    assert devices.cuda_present() is expected


def test_wants_cuda_follows_auto_and_explicit_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _gpu_files(monkeypatch, True)
    assert devices.wants_cuda("auto") is True
    _gpu_files(monkeypatch, False)
    assert devices.wants_cuda("auto") is False
    assert devices.wants_cuda("cuda:1") is True
    assert devices.wants_cuda("cpu") is False


def test_resolve_device_picks_the_gpu_only_where_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == "cpu"
    assert devices.resolve_device("cpu") == "cpu"
    with pytest.raises(RuntimeError, match="torch sees no CUDA device.*Use --device cpu"):
        devices.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto") == "cuda:0"
    assert devices.resolve_device("cuda") == "cuda:0"
    assert devices.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match="Unknown --device 'mps'"):
        devices.resolve_device("mps")


def test_free_accelerator_memory_empties_the_gpu_cache_and_survives_a_libc_without_malloc_trim(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))

    def no_glibc(name):
        raise OSError(f"{name}: cannot open shared object file")

    import ctypes

    monkeypatch.setattr(ctypes, "CDLL", no_glibc)
    devices.free_accelerator_memory()
    assert emptied == [True]
