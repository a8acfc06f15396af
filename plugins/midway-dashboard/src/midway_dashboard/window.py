"""The live-traffic window: what this process answered in the last minutes, in memory.

Fed by ``post_response``; read by the traffic, cache and upstream panels. Bounded both in time
(``window_seconds``) and in count (``max_events``) so a burst cannot grow memory without limit.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from midway.annotations import CACHE, COST_USD
from midway.exchange import Exchange


@attrs.define(slots=True)
class Event:
    """One finished request, reduced to what the dashboard charts (no bodies, no secrets)."""

    # When it finished (time.time()): events are appended in this order, which keeps the
    # deque sorted even when a long stream that started early finishes late.
    t: float
    id: str
    status: int
    duration_ms: float
    ttfb_ms: float | None
    streaming: bool
    model: str | None
    principal: str
    upstream: str | None
    key_id: str | None
    cache: str | None
    error_type: str | None
    client_disconnected: bool
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = None

    @property
    def is_error(self) -> bool:
        # The gateway's or upstream's failures: 5xx, rate limits, and error events in a stream
        # that began as a 200. Other 4xx are the client's mistakes; they show by status.
        return self.status >= 500 or self.status == 429 or \
            (self.status < 400 and self.error_type is not None)

    def as_dict(self) -> dict[str, Any]:
        return {"t": self.t, "id": self.id, "status": self.status,
                "duration_ms": round(self.duration_ms, 1),
                "ttfb_ms": None if self.ttfb_ms is None else round(self.ttfb_ms, 1),
                "streaming": self.streaming, "model": self.model, "principal": self.principal,
                "upstream": self.upstream, "key_id": self.key_id, "cache": self.cache,
                "error_type": self.error_type, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cost_usd": self.cost_usd}


def event_from_exchange(exchange: Exchange) -> Event:
    upstream = exchange.upstream
    cache = exchange.annotations.get(CACHE)
    timings = exchange.timings
    duration = timings.total_ms or 0.0
    return Event(
        t=timings.started_at + duration / 1000, id=exchange.id, status=exchange.status or 0,
        duration_ms=duration, ttfb_ms=timings.ttfb_ms,
        streaming=exchange.streaming, model=_model(exchange), principal=exchange.principal.name,
        upstream=upstream.name if upstream is not None and exchange.attempts else None,
        key_id=upstream.key_id if upstream is not None and exchange.attempts else None,
        cache=cache if isinstance(cache, str) else None, error_type=exchange.error_type,
        client_disconnected=exchange.client_disconnected,
        input_tokens=exchange.usage.input_tokens, output_tokens=exchange.usage.output_tokens,
        cost_usd=_cost(exchange.annotations.get(COST_USD)))


def _model(exchange: Exchange) -> str | None:
    # The answer's model, as the access log shows it: the request's (its whole body parsed,
    # after the fact) only when no answer named one, as errors do.
    return exchange.response_model or exchange.model


def _cost(value: object) -> float | None:
    # billing's annotation is a str of a Decimal; a float is plenty for a live total.
    try:
        return float(value) if isinstance(value, str | int | float) else None
    except ValueError:
        return None


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (``None`` when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(durations: Iterable[float]) -> dict[str, float | None]:
    values = sorted(durations)
    return {"p50": percentile(values, 50), "p90": percentile(values, 90),
            "p95": percentile(values, 95), "p99": percentile(values, 99),
            "max": values[-1] if values else None}


class TrafficWindow:
    """A rolling, time-ordered record of finished requests."""

    def __init__(self, window_seconds: float = 900.0, max_events: int = 100_000) -> None:
        self.window_seconds = window_seconds
        self.events: deque[Event] = deque(maxlen=max_events)
        self.total = 0  # since start, for "requests served" even after they left the window

    def add(self, event: Event) -> None:
        self.events.append(event)
        self.total += 1
        self.expire(event.t)

    def expire(self, now: float) -> None:
        cutoff = now - self.window_seconds
        events = self.events
        while events and events[0].t < cutoff:
            events.popleft()

    def since(self, start: float) -> list[Event]:
        # Events are in order of their end; scanning from the newest end keeps this cheap for
        # the short spans the live view asks for.
        out = []
        for event in reversed(self.events):
            if event.t < start:
                break
            out.append(event)
        out.reverse()
        return out

    def traffic(self, now: float | None = None, span: float = 300.0, bucket: float = 5.0,
                recent_span: float = 60.0) -> dict[str, Any]:
        """Rates, error counts and latency percentiles: a chart series plus current figures."""
        now = time.time() if now is None else now
        self.expire(now)
        span = min(span, self.window_seconds)
        events = self.since(now - span)
        n_buckets = max(1, int(span // bucket))
        first = math.floor(now / bucket) * bucket - (n_buckets - 1) * bucket
        counts = [0] * n_buckets
        errors = [0] * n_buckets
        durations: list[list[float]] = [[] for _ in range(n_buckets)]
        for event in events:
            index = int((event.t - first) // bucket)
            if 0 <= index < n_buckets:
                counts[index] += 1
                errors[index] += event.is_error
                durations[index].append(event.duration_ms)
        p50, p95, p99 = [], [], []
        for values in durations:
            values.sort()
            p50.append(percentile(values, 50))
            p95.append(percentile(values, 95))
            p99.append(percentile(values, 99))
        recent = [e for e in events if e.t >= now - recent_span]
        statuses = Counter(_status_class(e.status) for e in recent)
        models = Counter(e.model or "-" for e in recent)
        return {
            "now": now,
            "bucket_seconds": bucket,
            "series": {
                "t": [first + i * bucket for i in range(n_buckets)],
                "rps": [c / bucket for c in counts],
                "errors_per_s": [e / bucket for e in errors],
                "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
            },
            "recent_seconds": recent_span,
            "requests": len(recent),
            "rps": len(recent) / recent_span,
            "errors": sum(e.is_error for e in recent),
            "latency_ms": latency_summary(e.duration_ms for e in recent),
            "ttfb_ms": latency_summary(e.ttfb_ms for e in recent if e.ttfb_ms is not None),
            "streaming": sum(e.streaming for e in recent),
            "tokens": {"input": sum(e.input_tokens for e in recent),
                       "output": sum(e.output_tokens for e in recent)},
            "cost_usd": sum(e.cost_usd or 0.0 for e in recent),
            "by_status": dict(sorted(statuses.items())),
            "by_model": dict(models.most_common(10)),
            "total": self.total,
            "recent_errors": [e.as_dict() for e in reversed(events) if e.is_error][:10],
        }

    def cache_series(self, now: float | None = None, span: float = 900.0, bucket: float = 30.0
                     ) -> dict[str, Any]:
        """Cache outcomes over time, from the ``cache`` annotation the cache plugin sets."""
        now = time.time() if now is None else now
        self.expire(now)
        span = min(span, self.window_seconds)
        n_buckets = max(1, int(span // bucket))
        first = math.floor(now / bucket) * bucket - (n_buckets - 1) * bucket
        hits = [0] * n_buckets
        looked = [0] * n_buckets
        outcomes: Counter[str] = Counter()
        for event in self.since(now - span):
            if event.cache is None:
                continue
            outcomes[event.cache] += 1
            index = int((event.t - first) // bucket)
            if 0 <= index < n_buckets and event.cache != "bypass":
                looked[index] += 1
                hits[index] += event.cache in ("hit", "semantic-hit")
        return {"t": [first + i * bucket for i in range(n_buckets)],
                "hit_rate": [h / n if n else None for h, n in zip(hits, looked, strict=True)],
                "lookups": looked, "outcomes": dict(outcomes)}

    def by_upstream(self, now: float | None = None, span: float = 300.0) -> list[dict[str, Any]]:
        """Per upstream and key: requests, errors and latency seen by this process."""
        now = time.time() if now is None else now
        groups: dict[tuple[str, str | None], list[Event]] = {}
        for event in self.since(now - span):
            if event.upstream is not None:
                groups.setdefault((event.upstream, event.key_id), []).append(event)
        rows = []
        for (name, key_id), events in sorted(groups.items(), key=lambda kv: (kv[0][0],
                                                                             kv[0][1] or "")):
            last = events[-1]
            rows.append({"upstream": name, "key_id": key_id, "requests": len(events),
                         "errors": sum(e.is_error for e in events),
                         "latency_ms": latency_summary(e.duration_ms for e in events),
                         "last_status": last.status, "last_t": last.t})
        return rows

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        return [e.as_dict() for e in itertools.islice(reversed(self.events), limit)]


def _status_class(status: int) -> str:
    if status == 499:
        return "499"
    return f"{status // 100}xx" if status else "none"
