"""Wyoming speech-to-text server on Qwen3-ASR, with streaming partial transcripts."""

from shared import __version__

__all__ = ["__version__"]
