"""Code shared by the wyoming-qwen speech-to-text and text-to-speech servers.

Nothing imported from this package at start-up may import torch, numpy or the Qwen packages:
`describe` and the gateway must stay light. Heavy imports happen inside the functions that load models.
"""

__version__ = "0.1.0"
