"""Code shared by the wyoming-qwen speech-to-text and text-to-speech servers.

The modules the gateway imports (cli, launcher, gateway, supervisor, hub_cache, languages and the
servers' `info`) import neither torch, numpy nor the Qwen packages: `describe` and the gateway stay
light. The modules a worker uses import them where models load (`audio` uses numpy).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wyoming-qwen")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
