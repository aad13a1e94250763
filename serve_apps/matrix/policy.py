"""Per-user rate limiting (sliding window, injected clock so it is testable without sleeping)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    def __init__(self, requests: int, per_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.requests = requests
        self.per_seconds = per_seconds
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._warned: dict[str, float] = {}

    def check(self, user_id: str) -> float:
        """0 when ``user_id`` may go ahead now (and counts it), else seconds until it may."""
        now = self._clock()
        window = self._seen.setdefault(user_id, deque())
        while window and now - window[0] >= self.per_seconds:
            window.popleft()
        if len(window) < self.requests:
            window.append(now)
            return 0.0
        return self.per_seconds - (now - window[0])

    def should_warn(self, user_id: str) -> bool:
        """One friendly "slow down" per window, not one per dropped command."""
        now = self._clock()
        if now - self._warned.get(user_id, float("-inf")) < self.per_seconds:
            return False
        self._warned[user_id] = now
        return True
