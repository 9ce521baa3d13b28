"""Back-off after failures: the next attempt waits 10 s, doubling per failure up to 5 minutes.

Meanwhile callers are refused at once with the reason, instead of each waiting for another attempt
that is likely to fail the same way (a missing model, a worker that cannot start).
"""

from __future__ import annotations

import time

FIRST_DELAY = 10.0
MAX_DELAY = 300.0


class Backoff:
    def __init__(self, first: float = FIRST_DELAY, maximum: float = MAX_DELAY) -> None:
        self.first, self.maximum = first, maximum
        self.failures = 0
        self.last_error = ""
        self._retry_at = 0.0

    def failed(self, why: str) -> float:
        """Count a failure; returns the seconds until the next attempt."""
        self.failures += 1
        self.last_error = why
        delay = min(self.first * 2 ** (self.failures - 1), self.maximum)
        self._retry_at = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0

    def wait_left(self) -> float:
        """Seconds until an attempt is allowed again (0: now)."""
        return max(0.0, self._retry_at - time.monotonic()) if self.failures else 0.0
