"""A loaded model's memory as file pages: what the kernel can take back, and give back from the page cache.

A worker in standby (shared/idle_policy.py) keeps its model, so the next request neither imports, loads nor
packs anything. What it must not keep is anonymous memory: without swap, the kernel can never reclaim it. So
the model's weights are copied into one unlinked file and mapped where the model reads them (MAP_PRIVATE):
- torch tensors (parameters, int8 weights) are written to the file, and each tensor is pointed at its copy
  in the mapping (`Tensor.set_`); the anonymous original is freed;
- fbgemm's packed int8 weights are opaque C++ buffers. `record_allocations` notes the address ranges that
  packing allocated; their bytes are written to the file and the file is mapped over them at the same
  address (MAP_FIXED), so the pointers fbgemm holds stay valid.
Then `release` drops those pages from the process (MADV_DONTNEED); the next request faults them back in
from the page cache (a minor fault per 64 KiB, about a millisecond per hundred MiB), or from the disk if
the kernel needed the memory meanwhile.

Weights are never written after they are loaded. Should a page be written anyway, MAP_PRIVATE gives the
writer a private copy, so nothing is ever wrong; `release` leaves a mapping with such a copy alone
(dropping it would undo the write).

The file is unlinked as soon as it is created: it lives as long as its mappings, and nothing is left on
disk when the worker exits, however it exits.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import logging
import mmap
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

_LOGGER = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
MIN_BYTES = 1 << 20  # smaller tensors and ranges stay where they are: not worth a mapping each
MiB = 1 << 20

# glibc's mallopt: allocations from this size on get mappings of their own, which `record_allocations` can
# tell apart (below it they share the heap with everything else)
_M_MMAP_THRESHOLD = -3
_RECORDING_THRESHOLD = 64 * 1024
_USUAL_THRESHOLD = 32 * MiB  # where glibc's own dynamic threshold ends up (its maximum on 64-bit)
_MADV_DONTNEED = 4

Range = Tuple[int, int]  # [start, end) addresses, page-aligned


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str  # "" for anonymous memory

    @property
    def anonymous(self) -> bool:
        return self.path in ("", "[heap]")


def mappings() -> List[Mapping]:
    """This process's memory mappings (/proc/self/maps), by address."""
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            found.append(Mapping(start, end, parts[1], parts[5].strip() if len(parts) > 5 else ""))
    return found


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


@contextlib.contextmanager
def record_allocations(into: List[Range]) -> Iterator[None]:
    """Append to `into` the address ranges of the anonymous mappings created inside the block and still
    there after it: large allocations get mappings of their own meanwhile. Run it where nothing else
    allocates much (the model loader, before the model serves). Thread stacks and malloc's per-thread
    heaps (next to a guard or reserved range) are left out: other threads write them at any time."""
    libc = _libc()
    before = _anonymous_ranges(mappings())
    libc.mallopt(_M_MMAP_THRESHOLD, _RECORDING_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _USUAL_THRESHOLD)
        after = mappings()
        reserved = {m.start for m in after if m.perms.startswith("---")} | {
            m.end for m in after if m.perms.startswith("---")
        }
        candidates = [(m.start, m.end) for m in after if m.path == "" and m.perms.startswith("rw")]
        # a new range that borders a reserved one is a thread's stack (above its guard page) or the grown
        # part of a malloc heap (below its reserve); a packed matrix that happens to land there is left out
        # too, and stays anonymous memory (safe, only not released in standby)
        into.extend(
            (start, end)
            for start, end in _subtract(candidates, before)
            if end - start >= MIN_BYTES and start not in reserved and end not in reserved
        )


def _anonymous_ranges(found: List[Mapping]) -> List[Range]:
    return [(m.start, m.end) for m in found if m.path == ""]


def _subtract(ranges: List[Range], taken: List[Range]) -> List[Range]:
    """The parts of `ranges` that no range of `taken` covers."""
    taken = sorted(taken)
    out = []
    for start, end in ranges:
        cursor = start
        index = max(0, bisect.bisect_right(taken, (start, start)) - 1)
        while cursor < end and index < len(taken):
            t_start, t_end = taken[index]
            if t_end <= cursor:
                index += 1
                continue
            if t_start >= end:
                break
            if t_start > cursor:
                out.append((cursor, t_start))
            cursor = max(cursor, t_end)
            index += 1
        if cursor < end:
            out.append((cursor, end))
    return out


class FilePages:
    """One model's file of pages. Everything runs on the inference thread (no inference meanwhile)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=".wyoming-qwen-pages-", dir=folder)
        os.unlink(path)
        self.folder = folder
        self._fd = fd
        self._size = 0
        self._maps: List[mmap.mmap] = []  # the tensors' mappings (each alive while its tensors are)
        self._regions: List[Range] = []  # the ranges mapped over fbgemm's buffers
        self._libc = _libc()

    @property
    def bytes(self) -> int:
        return self._size

    def close(self) -> None:
        """The mappings stay valid; only the descriptor goes."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _append(self, address: int, size: int) -> int:
        """Write `size` bytes from `address` at the end of the file; returns their (page-aligned) offset."""
        offset = self._size
        view = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
        written = 0
        while written < size:
            written += os.pwrite(self._fd, view[written:], offset + written)
        self._size = offset + -(-size // PAGE) * PAGE
        return offset

    def adopt_tensors(self, tensors: Iterable) -> int:
        """Move each anonymous storage of `tensors` (of MIN_BYTES or more) into the file, repointing every
        tensor that shares it; returns the bytes moved."""
        import torch

        by_storage: Dict[int, list] = {}
        for tensor in tensors:
            storage = tensor.untyped_storage()
            if storage.nbytes() >= MIN_BYTES and storage.device.type == "cpu":
                by_storage.setdefault(storage.data_ptr(), []).append(tensor)
        found = mappings()
        starts = [m.start for m in found]
        moved = 0
        for pointer, sharing in by_storage.items():
            index = bisect.bisect_right(starts, pointer) - 1
            if index < 0 or not found[index].anonymous or pointer >= found[index].end:
                continue  # already file pages (a checkpoint mapped by safetensors, or ours)
            storage = sharing[0].untyped_storage()
            size = storage.nbytes()
            offset = self._append(pointer, size)
            mapped = mmap.mmap(
                self._fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset
            )
            self._maps.append(mapped)
            copy = torch.frombuffer(mapped, dtype=torch.uint8).untyped_storage()
            with torch.no_grad():
                for tensor in {id(t): t for t in sharing}.values():
                    tensor.set_(copy, tensor.storage_offset(), tensor.size(), tensor.stride())
            moved += size
        return moved

    def adopt_ranges(self, ranges: Iterable[Range]) -> int:
        """Map the file over each range (still an anonymous mapping as recorded), with the same bytes;
        returns the bytes moved."""
        current = [(m.start, m.end) for m in mappings() if m.path == "" and m.perms.startswith("rw")]
        moved = 0
        for start, end in ranges:
            if _subtract([(start, end)], current):
                continue  # freed since (part of it is no longer an anonymous mapping)
            size = end - start
            offset = self._append(start, size)
            flags = mmap.MAP_PRIVATE | 0x10  # MAP_FIXED
            result = self._libc.mmap(start, size, mmap.PROT_READ | mmap.PROT_WRITE, flags, self._fd, offset)
            if result != start:
                raise OSError(ctypes.get_errno(), f"mapping the file over {start:#x} failed")
            self._regions.append((start, end))
            moved += size
        return moved

    def release(self) -> int:
        """Drop this file's pages from the process (MADV_DONTNEED), except where a page was written since it
        was mapped; returns the bytes of the mappings released."""
        dirty = _written_ranges()
        released = 0
        for mapped in self._maps:
            start = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
            if not _overlaps(start, start + len(mapped), dirty):
                mapped.madvise(mmap.MADV_DONTNEED)
                released += len(mapped)
        for start, end in self._regions:
            if not _overlaps(start, end, dirty) and _still_ours(start, end):
                self._libc.madvise(start, end - start, _MADV_DONTNEED)
                released += end - start
        return released


def _written_ranges() -> List[Range]:
    """Mappings of files that hold private copies of written pages (their smaps entry counts them as
    Anonymous)."""
    written, current = [], None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                start, end = (int(x, 16) for x in first.split("-"))
                current = (start, end)
            elif first == "Anonymous:" and current is not None and int(line.split()[1]) > 0:
                written.append(current)
    return written


def _overlaps(start: int, end: int, ranges: List[Range]) -> bool:
    return any(s < end and start < e for s, e in ranges)


def _still_ours(start: int, end: int) -> bool:
    """The range is still mapped from a file (fbgemm has not freed it since)."""
    return not _subtract([(start, end)], [(m.start, m.end) for m in mappings() if m.path not in ("", "[heap]")])


def anonymous_mib(pid: Optional[int] = None) -> Tuple[float, float]:
    """(anonymous, file-backed) resident MiB of a process, from /proc/PID/smaps_rollup."""
    values = {}
    with open(f"/proc/{pid or 'self'}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if parts[0] in ("Rss:", "Anonymous:"):
                values[parts[0]] = int(parts[1]) / 1024
    return values["Anonymous:"], values["Rss:"] - values["Anonymous:"]
