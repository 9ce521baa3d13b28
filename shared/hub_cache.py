"""Finding files of hub models in a Hugging Face cache, without importing huggingface_hub.

The gateway answers `describe` from a cached model's config.json; importing huggingface_hub for that
would add about 11 MiB to it. The default cache follows huggingface_hub's own rules
(`huggingface_hub.constants`), so the gateway and the worker always look in the same place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional


def default_hub_cache() -> Path:
    """HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, where HF_HOME defaults to
    $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface."""
    home = os.getenv("HF_HOME") or os.path.join(
        os.getenv("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    home = os.path.expandvars(os.path.expanduser(home))
    cache = os.getenv("HF_HUB_CACHE") or os.getenv("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def cached_snapshot(repo_id: str, cache_dir: Path) -> Optional[Path]:
    """The snapshot folder of a hub model's `main` revision in one cache, or None."""
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    try:
        revision = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo / "snapshots" / revision
    return snapshot if revision and snapshot.is_dir() else None


def find_cached(repo_id: str, data_dirs: Iterable[str] = (), filename: Optional[str] = None) -> Optional[Path]:
    """A hub model's snapshot (or one file of it) in the data dirs, then in the default cache."""
    for cache_dir in [*map(Path, data_dirs), default_hub_cache()]:
        snapshot = cached_snapshot(repo_id, cache_dir)
        if snapshot is None:
            continue
        if filename is None:
            return snapshot
        if (snapshot / filename).is_file():
            return snapshot / filename
    return None
