"""Where a model's files come from: a local directory, a `--data-dir`, or a download from the hub."""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from .hub_cache import default_hub_cache, find_cached

_LOGGER = logging.getLogger(__name__)


class ModelNotAvailable(RuntimeError):
    """The model is neither on disk nor allowed (or able) to be downloaded."""


def resolve_model(
    model: str,
    data_dirs: Optional[Sequence[str]] = None,
    local_files_only: bool = False,
) -> Path:
    """Return a local directory holding `model`, a hub id (`Qwen/Qwen3-ASR-0.6B`) or a directory.

    The data dirs are searched first (each as a Hugging Face cache), then the default cache. A missing
    model is downloaded into the first data dir (or the default cache), with its progress in the log.
    """
    if os.path.isdir(model):
        return Path(model)
    if "/" not in model or model.startswith((".", "/")):
        raise ModelNotAvailable(f"Model directory {model!r} does not exist")

    dirs = list(data_dirs or [])
    cached = find_cached(model, dirs)
    if cached is not None:
        return cached
    if local_files_only:
        where = ", ".join([*dirs, str(default_hub_cache())])
        raise ModelNotAvailable(
            f"{model} is not in {where} and --local-files-only forbids downloading it. "
            f"Download it once without --local-files-only, or point --model at its directory."
        )

    from huggingface_hub import snapshot_download

    cache_dir = dirs[0] if dirs else str(default_hub_cache())
    _check_writable(Path(cache_dir), model)
    _LOGGER.info("Downloading %s into %s", model, cache_dir)
    started = time.monotonic()
    try:
        path = Path(snapshot_download(model, cache_dir=cache_dir, tqdm_class=_progress_logger(model)))
    except Exception as err:
        raise ModelNotAvailable(f"Could not download {model}: {err}") from err
    size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    _LOGGER.info("Downloaded %s (%.0f MB) in %.1f s", model, size_mb, time.monotonic() - started)
    return path


def _check_writable(directory: Path, model: str) -> None:
    """Fail before a download of several GB, not after it, when its files cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise ModelNotAvailable(
            f"{model} must be downloaded into {directory}, which this process (uid {os.getuid()}) cannot write "
            f"({err.strerror or err}). Fix the folder's permissions, or give a writable --data-dir first."
        ) from None


def _progress_logger(model: str):
    """A tqdm class that writes download progress to the log instead of a terminal bar."""
    from tqdm.auto import tqdm

    class LoggingTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["file"] = io.StringIO()  # no terminal bar; progress goes to the log
            kwargs["mininterval"] = 0
            super().__init__(*args, **kwargs)
            self._logged_at = 0.0

        def update(self, n=1):
            result = super().update(n)
            now = time.monotonic()
            if now - self._logged_at >= 2.0 or (self.total and self.n >= self.total):
                self._logged_at = now
                total = f"/{self.total}" if self.total else ""
                _LOGGER.info("Downloading %s: %s%s %s", model, self.n, total, self.unit)
            return result

    return LoggingTqdm
