"""Wyoming text-to-speech server on Qwen3-TTS: preset, cloned and designed voices, streamed by sentence."""

from shared import __version__

__all__ = ["__version__"]
