"""Test rig (never product code): a model load that takes WYOMING_QWEN_RIG_LOAD_DELAY seconds longer,
as a first download of several GB does. Put this folder on PYTHONPATH of a server process."""

import os
import sys
import threading
import time


def _patch_when_served() -> None:
    deadline = time.monotonic() + 120
    while "wyoming_qwen_asr.app" not in sys.modules and "wyoming_qwen_tts.app" not in sys.modules:
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)
    import shared.model_store as store

    resolve = store.resolve_model
    delay = float(os.environ["WYOMING_QWEN_RIG_LOAD_DELAY"])

    def slow_resolve(*args, **kwargs):
        time.sleep(delay)
        return resolve(*args, **kwargs)

    store.resolve_model = slow_resolve


if os.environ.get("WYOMING_QWEN_RIG_LOAD_DELAY"):
    threading.Thread(target=_patch_when_served, daemon=True).start()
