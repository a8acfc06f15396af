"""A retry budget: retries may add at most a fraction of recent traffic (plus a small floor),
so a failing upstream cannot make midway multiply its own load."""

from __future__ import annotations

WINDOW = 10  # seconds of history, in one-second buckets


class RetryBudget:
    def __init__(self, ratio: float, min_per_second: float) -> None:
        self.ratio = ratio
        self.floor = min_per_second * WINDOW
        self._requests = [0] * WINDOW
        self._retries = [0] * WINDOW
        self._second = [0] * WINDOW

    def _slot(self, now: float) -> int:
        second = int(now)
        slot = second % WINDOW
        if self._second[slot] != second:
            self._second[slot] = second
            self._requests[slot] = 0
            self._retries[slot] = 0
        return slot

    def _total(self, counts: list[int], now: float) -> int:
        oldest = int(now) - WINDOW
        return sum(c for c, s in zip(counts, self._second, strict=True) if s > oldest)

    def request(self, now: float) -> None:
        self._requests[self._slot(now)] += 1

    def try_retry(self, now: float) -> bool:
        """Spend one retry if the budget allows it."""
        slot = self._slot(now)
        allowed = self.floor + self.ratio * self._total(self._requests, now)
        if self._total(self._retries, now) >= allowed:
            return False
        self._retries[slot] += 1
        return True
