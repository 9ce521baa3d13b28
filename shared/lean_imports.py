"""Keep a worker's start-up free of imports that serving never uses.

Measured with `python -X importtime` on these machines (2 cores), of a 4-6 s worker start:
- `nagisa` (2-3 s): qwen-asr imports it at the top of its forced aligner, which this server never calls.
- `torchaudio`: qwen-tts imports `torchaudio.compliance.kaldi` (plain torch code) for its 25 Hz tokenizer,
  which this server never loads. torchaudio's own `__init__` loads C++ libraries built against one exact
  torch: deferred, the TTS server also runs on a torch build that has no matching torchaudio (the CPU
  build the benchmarks measure, `script/bench cold-start --cpu-torch`).
  `import nagisa` now gives a stand-in module that imports the real one on first attribute access, so the
  aligner would still work if it were ever called. (`importlib.util.LazyLoader` cannot do this on Python
  3.11: the import statement itself reads the module's `__spec__`, which loads it.)
- scikit-learn (1.3-1.9 s, pandas included): transformers imports `sklearn.metrics` only when it finds
  scikit-learn installed, for a threshold in assisted generation (`generate(assistant_model=...)`), which
  we never use. Marking the package absent in `sys.modules` makes transformers' check say no.
Both hold whatever upstream changes, or fail loudly: an import that really needs scikit-learn raises
ImportError, and tests/test_cold_start.py fails if either package is imported while serving.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

DEFERRED = ("nagisa", "torchaudio")  # imported at the top of modules we load, used only by features we never call
ABSENT = ("sklearn",)  # optional for transformers; present, it is imported for a feature we never call


def install() -> None:
    """Call before importing transformers or a Qwen package."""
    for name in ABSENT:
        sys.modules.setdefault(name, None)  # None: "import sklearn" raises ImportError; find_spec says absent
    for name in DEFERRED:
        _defer(name)


def _defer(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = types.ModuleType(name, f"{name}, imported on first use (shared.lean_imports)")
    # what `importlib.util.find_spec(name)` reads (transformers asks whether a package is there), and where
    # the package's submodules are: a submodule that needs nothing of its package's own `__init__` (such as
    # torchaudio.compliance.kaldi) is imported as usual, and the package itself only on first use
    stand_in.__spec__ = spec
    if spec.submodule_search_locations is not None:
        stand_in.__path__ = list(spec.submodule_search_locations)

    def real_attribute(attribute: str):
        if attribute.startswith("__") and attribute != "__version__":  # introspection (inspect.getmodule walks
            # every module's __file__)
            raise AttributeError(attribute)
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        return getattr(importlib.import_module(name), attribute)

    stand_in.__getattr__ = real_attribute  # module-level __getattr__ (PEP 562): only for missing names
    sys.modules[name] = stand_in
