"""Voice-clone prompts, computed once per reference and model, kept on disk beside the voice.

`create_voice_clone_prompt` encodes the reference audio with the speech tokenizer and the speaker
encoder; that takes seconds on a CPU, so its result is cached in `VOICES/<name>/.clone-prompt-<model>.safetensors`
(safetensors: tensors plus string metadata, nothing that unpickles). The cache is keyed by a hash of
reference.wav and reference.txt and by the model; a changed reference rebuilds it.

A reference must be MIN_REFERENCE_SECONDS to MAX_REFERENCE_SECONDS long; it is checked from the file's
header (`soundfile.info`) before anything reads the audio. Qwen3-TTS clones from about 3 s of speech;
under 1 s the speaker encoder has too little to go on. Past 60 s the reference is a burden, not a help:
its codes (12.5 per second) are put before every sentence's prompt, so a minute already adds 750
positions to each sentence's prefill. A too-long reference is rejected rather than trimmed, because
reference.txt is the transcript of the whole recording: a cut recording would no longer match it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

_LOGGER = logging.getLogger(__name__)


MIN_REFERENCE_SECONDS = 1.0
MAX_REFERENCE_SECONDS = 60.0
_ACCEPTED = (
    f"a reference must be {MIN_REFERENCE_SECONDS:g} to {MAX_REFERENCE_SECONDS:g} s of clear speech "
    "(3 to 10 s works best) in a WAV file, with its words in reference.txt"
)


class BadReference(ValueError):
    """A cloned voice's reference.wav cannot be used; the message says why and what is accepted."""


def check_reference(folder: Path) -> float:
    """The reference's length in seconds, read from its header; BadReference when it cannot be used."""
    import soundfile as sf

    name = f"{folder.name}/reference.wav"
    try:
        info = sf.info(str(folder / "reference.wav"))
    except Exception as err:  # soundfile's LibsndfileError (a RuntimeError), or an OSError
        raise BadReference(f"Voice {folder.name!r}: {name} cannot be read as audio ({err}); {_ACCEPTED}") from None
    seconds = info.frames / info.samplerate if info.samplerate > 0 else 0.0
    if not MIN_REFERENCE_SECONDS <= seconds <= MAX_REFERENCE_SECONDS:
        raise BadReference(f"Voice {folder.name!r}: {name} is {seconds:.2f} s long; {_ACCEPTED}")
    return seconds


def reference_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    digest.update((folder / "reference.wav").read_bytes())
    digest.update(b"\0")
    digest.update((folder / "reference.txt").read_text(encoding="utf-8").strip().encode())
    return digest.hexdigest()


def cache_path(folder: Path, model_id: str) -> Path:
    return folder / f".clone-prompt-{hashlib.sha256(model_id.encode()).hexdigest()[:12]}.safetensors"


class ClonePromptCache:
    """In memory and on disk; used on the inference thread only."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self._memory: Dict[Tuple[str, str], list] = {}
        self.computed = 0

    def get(self, tts, folder: Path) -> List:
        check_reference(folder)
        digest = reference_digest(folder)
        key = (str(folder), digest)
        if key in self._memory:
            return self._memory[key]
        items = self._load(folder, digest)
        if items is None:
            items = self._compute(tts, folder)
            self._save(folder, digest, items)
        self._memory = {k: v for k, v in self._memory.items() if k[0] != str(folder)}
        self._memory[key] = items
        return items

    def _compute(self, tts, folder: Path) -> List:
        import soundfile as sf

        started = time.monotonic()
        try:
            audio, rate = sf.read(str(folder / "reference.wav"), dtype="float32", always_2d=False)
        except Exception as err:  # a header that promises more than the file holds
            raise BadReference(
                f"Voice {folder.name!r}: {folder.name}/reference.wav cannot be read as audio ({err}); {_ACCEPTED}"
            ) from None
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        text = (folder / "reference.txt").read_text(encoding="utf-8").strip()
        items = tts.create_voice_clone_prompt(ref_audio=(audio, int(rate)), ref_text=text)
        self.computed += 1
        _LOGGER.info("Computed the clone prompt of %s in %.2f s", folder.name, time.monotonic() - started)
        return items

    def _load(self, folder: Path, digest: str):
        path = cache_path(folder, self.model_id)
        if not path.exists():
            return None
        try:
            from qwen_tts.inference.qwen3_tts_model import VoiceClonePromptItem
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("reference") != digest or meta.get("model") != self.model_id:
                    _LOGGER.info("Reference of %s changed: rebuilding its clone prompt", folder.name)
                    return None
                ref_code = f.get_tensor("ref_code") if "ref_code" in f.keys() else None
                embedding = f.get_tensor("ref_spk_embedding")
            icl = meta.get("icl_mode") == "1"
            return [
                VoiceClonePromptItem(
                    ref_code=ref_code,
                    ref_spk_embedding=embedding,
                    x_vector_only_mode=not icl,
                    icl_mode=icl,
                    ref_text=meta.get("ref_text"),
                )
            ]
        except Exception as err:  # a damaged cache is rebuilt, never trusted
            _LOGGER.warning("Ignoring unreadable clone prompt cache %s: %s", path, err)
            return None

    def _save(self, folder: Path, digest: str, items: List) -> None:
        from safetensors.torch import save

        (item,) = items
        tensors = {"ref_spk_embedding": item.ref_spk_embedding.detach().cpu().contiguous()}
        if item.ref_code is not None:
            tensors["ref_code"] = item.ref_code.detach().cpu().contiguous()
        meta = {
            "reference": digest,
            "model": self.model_id,
            "icl_mode": "1" if item.icl_mode else "0",
            "ref_text": item.ref_text or "",
        }
        path = cache_path(folder, self.model_id)
        # written whole to a temporary file beside it, then renamed: a full disk or a crash never
        # leaves a partial cache file under the real name
        temporary = None
        try:
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=f"{path.name}.", suffix=".tmp")
            with os.fdopen(handle, "wb") as f:
                f.write(save(tensors, metadata=meta))
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except OSError as err:  # a full disk, a read-only voices folder: keep it in memory only
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
            _LOGGER.warning("Cannot write %s (%s); the clone prompt is kept in memory only", path, err)
