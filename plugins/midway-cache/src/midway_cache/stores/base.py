"""What every cache store keeps and answers: entries, semantic candidates, counters, locks."""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import orjson

# the counters every store keeps (``stats`` adds ``entries`` and ``bytes``)
COUNTERS = ("hits", "misses", "semantic_hits", "shadow_hits", "bypasses", "stores",
            "saved_tokens", "saved_usd")


@attrs.define
class Entry:
    """One stored answer: the complete message as the upstream sent it (original ids)."""

    key: str
    tenant: str
    message: dict[str, Any]
    created_at: float
    expires_at: float | None = None
    partition: str | None = None  # semantic partition, when the request was eligible
    prompt: str | None = None  # the last user turn's text (semantic)
    vector: bytes | None = None  # float32 embedding of ``prompt``
    cost_usd: str | None = None  # what billing said it cost (for saved_usd)
    _body: bytes | None = None

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = orjson.dumps(self.message)
        return self._body

    @property
    def size(self) -> int:
        return len(self.body)

    @property
    def tool_use(self) -> bool:
        return any(isinstance(b, dict) and b.get("type") == "tool_use"
                   for b in self.message.get("content") or [])

    @property
    def tokens(self) -> int:
        """Tokens a hit saves: everything the upstream would have processed again."""
        usage = self.message.get("usage") or {}
        return sum(v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)
                   and k in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                             "cache_read_input_tokens"))

    @classmethod
    def from_body(cls, body: bytes, **fields: Any) -> Entry:
        return cls(message=orjson.loads(body), body=body, **fields)


@attrs.define(frozen=True)
class Candidate:
    """A stored answer that may serve a semantically similar request of the same partition."""

    key: str
    prompt: str
    tool_use: bool
    vector: bytes


class Store(Protocol):
    """A cache store. Every method is safe to call from the event loop (it never blocks it)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> str | None:
        """``None`` if the store answers, else what went wrong (``/readyz``)."""
        ...

    async def get(self, key: str, now: float) -> Entry | None:
        """The live entry of ``key`` (``None`` when absent or expired)."""
        ...

    async def put(self, entry: Entry) -> None:
        """Store (or replace) an entry, then evict the least recently used over the caps."""
        ...

    async def candidates(self, partition: str, now: float) -> list[Candidate]:
        """Live entries of a semantic partition."""
        ...

    async def record(self, touched: dict[str, float], counters: dict[str, float]) -> None:
        """Apply batched last-access times (LRU) and counter increments."""
        ...

    async def stats(self) -> dict[str, Any]:
        """``entries``, ``bytes`` and the :data:`COUNTERS`."""
        ...

    async def clear(self, tenant: str | None = None) -> int:
        """Delete the entries of one tenant, or all; returns how many were deleted."""
        ...

    async def purge(self, now: float) -> int:
        """Delete expired entries; returns how many."""
        ...

    async def lock(self, key: str, ttl: float) -> bool:
        """Take the fill lock of ``key`` across instances (``True``: this caller fills it)."""
        ...

    async def locked(self, key: str) -> bool: ...

    async def unlock(self, key: str) -> None: ...


def empty_stats() -> dict[str, Any]:
    stats: dict[str, Any] = {"entries": 0, "bytes": 0}
    stats.update({name: 0 for name in COUNTERS})
    stats["saved_usd"] = 0.0
    return stats
