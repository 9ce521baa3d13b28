"""`wyoming-qwen-tts`: the Wyoming text-to-speech server."""

from __future__ import annotations

from typing import List, Optional

from shared.launcher import main

from .kind import KIND


def run(argv: Optional[List[str]] = None) -> None:
    main(KIND, argv)


if __name__ == "__main__":
    run()
