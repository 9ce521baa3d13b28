"""An engine's standby: its model stays loaded and ready, its memory becomes file pages the kernel may reclaim.

Each engine owns one `EngineStandby` and calls `enter()` from its `standby()` (on the inference thread, with
no inference under way). Leaving standby takes nothing: the next request reads the same tensors and packed
weights, whose pages fault back in from the page cache.

On CUDA the weights stay in GPU memory where the captured graphs read them (a graph replays fixed
addresses): standby there hands back the allocator's cached blocks only, and the next request creates no
context and captures nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

from .file_pages import FilePages, Range

_LOGGER = logging.getLogger(__name__)


class EngineStandby:
    def __init__(self, modules: Iterable, folder: Optional[Path], packed_ranges: Optional[List[Range]] = None) -> None:
        """modules: the torch modules whose weights move (a module seen twice is moved once); folder: where
        the (unlinked) file of pages goes, None where nothing can be written (standby then only frees
        caches); packed_ranges: fbgemm's packed buffers (`shared.quantize.pack_for_cpu`)."""
        self.modules = list(modules)
        self.folder = folder
        self.packed_ranges = packed_ranges if packed_ranges is not None else []
        self.pages: Optional[FilePages] = None
        self.entered = 0

    def enter(self) -> str:
        """Move what is still anonymous into the file, drop the file's pages from memory; returns a summary
        for the log."""
        from .devices import free_accelerator_memory

        self.entered += 1
        moved = released = 0
        if self.folder is not None:
            try:
                if self.pages is None:
                    self.pages = FilePages(self.folder)
                moved = self.pages.adopt_tensors(_tensors(self.modules))
                moved += self.pages.adopt_ranges(self.packed_ranges)
                self.packed_ranges.clear()  # moved, or freed since: either way not again
                released = self.pages.release()
            except OSError as err:  # a full disk: standby keeps the memory, serving goes on
                _LOGGER.warning("Could not move the model's memory to %s: %s", self.folder, err)
        free_accelerator_memory()
        return f"{moved / 2**20:.0f} MiB moved to file pages, {released / 2**20:.0f} MiB of them released"


class IdleTiers:
    """What an engine gives the model manager for the idle tiers (shared/model_manager.py): its kernels'
    preparation after a load, and its weights as file pages once settled or in standby. An engine sets
    `standby_memory` (and `packing`, an int8 model's `shared.quantize.KernelPacking`) when it loads."""

    standby_memory: EngineStandby
    packing = None

    def drop_caches(self) -> None:
        """Forget what requests rebuild when needed (anonymous memory); nothing by default."""

    def prepare_step(self) -> bool:
        """One step of the kernels' preparation after a load (fbgemm packing); returns whether any are left.
        The model serves meanwhile (shared/quantize.py, KernelPacking)."""
        return self.packing is not None and self.packing.step()

    def settle(self) -> str:
        """Once the kernels are prepared and the server idle: the weights move to file pages now, not at
        the first standby; returns a summary for the log."""
        return self.standby_memory.enter()

    def standby(self) -> str:
        """Keep the model, hold its weights as file pages; returns a summary for the log."""
        self.drop_caches()
        return self.standby_memory.enter()


def _tensors(modules: List) -> Iterator:
    """Every weight of `modules`: parameters, buffers, and the int8 matrices of fused siblings."""
    from .quantize import Int8Linear

    seen = set()
    for root in modules:
        if id(root) in seen:
            continue
        seen.add(id(root))
        yield from root.parameters()
        yield from root.buffers()
        for layer in root.modules():
            if isinstance(layer, Int8Linear) and layer.siblings is not None:
                yield layer.siblings.weight
                yield layer.siblings.weight_scale


def pages_folder(model_dir: Path) -> Optional[Path]:
    """Where a model's file of pages goes: beside its int8 cache (a data volume in Docker; never a model
    folder mounted read-only), or None where nothing can be written."""
    from .quantize import cache_file

    cache = cache_file(Path(model_dir))
    return None if cache is None else cache.parent
