"""Per-write-key rate limiting: a token bucket per app, in events per second (pure, clock injected).

The limit holds per worker process; with ``--workers N`` the effective limit is N times higher.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by app id.

    Parameters:
        rate: tokens (events) added per second; 0 disables limiting.
        burst: bucket size; a request of more events than this is always refused.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, n: int) -> float:
        """Take ``n`` tokens for ``key``. Returns 0.0 if allowed, else seconds to wait before retrying."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(self.burst, now)
        else:
            b.tokens = min(self.burst, b.tokens + (now - b.updated) * self.rate)
            b.updated = now
        if b.tokens >= n:
            b.tokens -= n
            return 0.0
        missing = min(float(n), self.burst) - b.tokens
        return max(missing / self.rate, 0.001)

    @staticmethod
    def retry_after(wait: float) -> int:
        """Whole seconds for a ``Retry-After`` header (at least 1)."""
        return max(1, math.ceil(wait))
