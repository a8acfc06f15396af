"""Session affinity: a session (or principal) keeps its key while that key is healthy, so
Anthropic's prompt cache, which lives per organisation and key, stays warm."""

from __future__ import annotations

from collections import OrderedDict


class AffinityMap:
    """A bounded, expiring map from a session id to ``(upstream name, key fingerprint)``."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max(1, max_entries)
        self._entries: OrderedDict[str, tuple[str, str | None, float]] = OrderedDict()

    def get(self, session: str, now: float) -> tuple[str, str | None] | None:
        entry = self._entries.get(session)
        if entry is None:
            return None
        upstream, key, expires = entry
        if expires <= now:
            del self._entries[session]
            return None
        return upstream, key

    def set(self, session: str, upstream: str, key: str | None, now: float) -> None:
        self._entries[session] = (upstream, key, now + self.ttl)
        self._entries.move_to_end(session)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
