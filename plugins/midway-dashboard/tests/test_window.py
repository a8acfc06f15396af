"""The live-traffic window: rates, percentiles, expiry, cache and upstream breakdowns."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest

from midway.exchange import Attempt, Exchange, Upstream
from midway.testing import make_exchange
from midway_dashboard.window import (
    Event,
    TrafficWindow,
    _status_class,
    latency_summary,
    percentile,
)


def event(t: float, status: int = 200, duration: float = 100.0, upstream: str | None = "default",
          key_id: str | None = None, cache: str | None = None, error_type: str | None = None
          ) -> Exchange:
    """A finished exchange that ended at ``t`` after ``duration`` ms."""
    exchange = make_exchange()
    exchange.status, exchange.error_type = status, error_type
    exchange.timings.started_at = t - duration / 1000
    exchange.timings.total_ms, exchange.timings.ttfb_ms = duration, duration / 2
    exchange.usage.update({"input_tokens": 10, "output_tokens": 5})
    if cache is not None:
        exchange.annotations["cache"] = cache
    if upstream is not None:
        exchange.upstream = Upstream(url="http://x", name=upstream, key_id=key_id)
        exchange.attempts.append(Attempt(number=1, id=exchange.id, upstream=exchange.upstream,
                                         started=0.0))
    return exchange


def only(window: TrafficWindow) -> Event:
    [ev] = window.since(0)
    return ev


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_traffic_rates_errors_and_latency() -> None:
    window = TrafficWindow(window_seconds=900)
    now = 10_000.0
    for i in range(60):  # one a second for the last minute, 10 ms .. 600 ms
        window.add(event(now - 59.5 + i, duration=10.0 * (i + 1)))
    # A client's mistake is not a gateway error, even with its error type set.
    window.add(event(now - 2, status=400, duration=5, error_type="invalid_request_error"))
    # An error event in a stream that began as a 200 is one.
    window.add(event(now - 1.5, status=200, duration=5, error_type="overloaded_error"))
    window.add(event(now - 1, status=529, duration=5, error_type="overloaded_error"))
    data = window.traffic(now=now)
    assert data["requests"] == 63
    assert data["errors"] == 2
    assert data["rps"] == 63 / 60
    assert data["by_status"] == {"2xx": 61, "4xx": 1, "5xx": 1}
    latency = data["latency_ms"]
    assert latency["max"] == 600.0
    assert 280 <= latency["p50"] <= 310
    assert latency["p99"] == 600.0
    assert [e["status"] for e in data["recent_errors"]] == [529, 200]
    series = data["series"]
    assert len(series["t"]) == 60 and series["t"][-1] <= now
    assert abs(sum(series["rps"]) * 5 - 63) < 1e-9
    assert sum(series["errors_per_s"]) * 5 == 2


def test_window_forgets_old_events_and_is_bounded() -> None:
    window = TrafficWindow(window_seconds=60, max_events=5)
    for i in range(10):
        window.add(event(1000.0 + i))
    assert len(window) == 5 and window.total == 10
    assert [e.t for e in window.since(0)] == [1005.0, 1006.0, 1007.0, 1008.0, 1009.0]
    data = window.traffic(now=1000.0 + 200)
    assert data["requests"] == 0 and len(window) == 0
    assert data["total"] == 10


def test_cache_series_counts_hits_over_lookups() -> None:
    window = TrafficWindow()
    now = 50_000.0
    for outcome in ["hit", "miss", "semantic-hit", "bypass", None]:
        window.add(event(now - 10, cache=outcome))
    data = window.cache_series(now=now)
    assert data["outcomes"] == {"hit": 1, "miss": 1, "semantic-hit": 1, "bypass": 1}
    rates = [r for r in data["hit_rate"] if r is not None]
    assert rates == [2 / 3]


def test_by_upstream_groups_by_upstream_and_key() -> None:
    window = TrafficWindow()
    now = 70_000.0
    window.add(event(now - 5, upstream="anthropic", key_id="abc123"))
    window.add(event(now - 4, upstream="anthropic", key_id="abc123", status=529,
                     error_type="overloaded_error"))
    window.add(event(now - 3, upstream="anthropic", key_id="def456"))
    window.add(event(now - 2, upstream=None))  # answered without an upstream (cache hit)
    rows = window.by_upstream(now=now)
    assert [(r["upstream"], r["key_id"], r["requests"], r["errors"]) for r in rows] == [
        ("anthropic", "abc123", 2, 1), ("anthropic", "def456", 1, 0)]
    assert rows[0]["last_status"] == 529


def test_event_from_exchange_reads_outcome_and_annotations() -> None:
    exchange = make_exchange()
    exchange.status = 200
    exchange.timings.total_ms = 42.0
    exchange.annotations.update(cache="miss", cost_usd="0.0012")
    exchange.upstream = Upstream(url="http://x", name="anthropic", key_id="k1")
    exchange.usage.update({"input_tokens": 12, "output_tokens": 7})
    window = TrafficWindow()
    window.add(exchange)
    ev = only(window)
    assert (ev.id, ev.principal, ev.ttfb_ms, ev.streaming) == (exchange.id, exchange.principal.name,
                                                                None, False)
    assert (ev.status, ev.duration_ms, ev.cache, ev.cost_usd) == (200, 42.0, "miss", 0.0012)
    assert (ev.input_tokens, ev.output_tokens, ev.model) == (12, 7, "claude-sonnet-4-6")
    # No attempt was made: the upstream was chosen but never reached.
    assert ev.upstream is None


def test_event_model_is_the_answers_and_the_request_is_parsed_only_without_one() -> None:
    answered = make_exchange()
    answered.status = 200
    answered.response_model = "claude-sonnet-4-6-20260101"
    window = TrafficWindow()
    window.add(answered)
    assert only(window).model == "claude-sonnet-4-6-20260101"
    # the request body was not parsed for it (a large body costs the relay)
    assert not answered.request.parsed

    refused = make_exchange()
    refused.status = 529  # an error answer names no model: the request's is shown
    window = TrafficWindow()
    window.add(refused)
    assert only(window).model == "claude-sonnet-4-6"


def test_the_ring_grows_wraps_and_shrinks_keeping_order_and_values() -> None:
    window = TrafficWindow(window_seconds=100, max_events=1000)
    added: list[tuple[float, str, int]] = []
    for i in range(1500):  # past max_events: the ring wraps, the oldest make room
        ex = event(1000.0 + i * 0.01, status=200 + i % 7, duration=float(i))
        ex.usage.update({"input_tokens": i, "output_tokens": 2 * i})
        window.add(ex)
        added.append((ex.timings.started_at + i / 1000, ex.id, 200 + i % 7))
    assert len(window) == 1000 and window.total == 1500
    kept = window.since(0)
    assert [(e.t, e.id, e.status) for e in kept] == added[500:]
    assert [(e.input_tokens, e.output_tokens) for e in kept] == [(i, 2 * i)
                                                                 for i in range(500, 1500)]
    assert [r["id"] for r in window.recent(3)] == [a[1] for a in added[:-4:-1]]
    # time passes: all but the last few leave, and the ring gives back its room
    window.add(event(1000.0 + 14.99 + 100 - 0.015))
    assert [e.t for e in window.since(0)][:2] == [a[0] for a in added[-2:]]
    assert len(window) == 3 and window._capacity < 1000


def test_values_the_packed_row_cannot_hold_are_kept_exactly() -> None:
    window = TrafficWindow()
    odd = event(10.0, status=70_000)
    odd.id = "request-from-elsewhere"
    odd.usage.update({"input_tokens": 2 ** 70, "output_tokens": -1})
    odd.annotations["cost_usd"] = "NaN"  # no number: no cost
    window.add(odd)
    ev = only(window)
    assert (ev.id, ev.status, ev.input_tokens, ev.output_tokens, ev.cost_usd) == (
        "request-from-elsewhere", 70_000, 2 ** 70, -1, None)
    assert ev.ttfb_ms == 50.0 and ev.duration_ms == 100.0 and not math.isnan(ev.t)


@pytest.mark.parametrize("cost", ["0.25", None])
def test_cost_and_ttfb_none_or_a_number(cost: str | None) -> None:
    window = TrafficWindow()
    ex = event(10.0)
    ex.timings.ttfb_ms = None
    if cost is not None:
        ex.annotations["cost_usd"] = cost
    window.add(ex)
    ev = only(window)
    assert ev.ttfb_ms is None and ev.cost_usd == (None if cost is None else 0.25)


# The readers as they were when they built an Event for every request of the span: the
# reference the column readers must equal, field for field.
def reference_traffic(window: TrafficWindow, now: float, span: float = 300.0,
                      bucket: float = 5.0, recent_span: float = 60.0) -> dict[str, Any]:
    window.expire(now)
    span = min(span, window.window_seconds)
    events = window.since(now - span)
    n_buckets = max(1, int(span // bucket))
    first = math.floor(now / bucket) * bucket - (n_buckets - 1) * bucket
    counts, errors = [0] * n_buckets, [0] * n_buckets
    durations: list[list[float]] = [[] for _ in range(n_buckets)]
    for e in events:
        index = int((e.t - first) // bucket)
        if 0 <= index < n_buckets:
            counts[index] += 1
            errors[index] += e.is_error
            durations[index].append(e.duration_ms)
    for values in durations:
        values.sort()
    recent = [e for e in events if e.t >= now - recent_span]
    return {
        "now": now, "bucket_seconds": bucket,
        "series": {"t": [first + i * bucket for i in range(n_buckets)],
                   "rps": [c / bucket for c in counts],
                   "errors_per_s": [e / bucket for e in errors],
                   "p50_ms": [percentile(v, 50) for v in durations],
                   "p95_ms": [percentile(v, 95) for v in durations],
                   "p99_ms": [percentile(v, 99) for v in durations]},
        "recent_seconds": recent_span, "requests": len(recent), "rps": len(recent) / recent_span,
        "errors": sum(e.is_error for e in recent),
        "latency_ms": latency_summary(e.duration_ms for e in recent),
        "ttfb_ms": latency_summary(e.ttfb_ms for e in recent if e.ttfb_ms is not None),
        "streaming": sum(e.streaming for e in recent),
        "tokens": {"input": sum(e.input_tokens for e in recent),
                   "output": sum(e.output_tokens for e in recent)},
        "cost_usd": sum(e.cost_usd or 0.0 for e in recent),
        "by_status": dict(sorted(Counter(_status_class(e.status) for e in recent).items())),
        "by_model": dict(Counter(e.model or "-" for e in recent).most_common(10)),
        "total": window.total,
        "recent_errors": [e.as_dict() for e in reversed(events) if e.is_error][:10],
    }


def reference_cache_series(window: TrafficWindow, now: float, span: float = 900.0,
                           bucket: float = 30.0) -> dict[str, Any]:
    window.expire(now)
    span = min(span, window.window_seconds)
    n_buckets = max(1, int(span // bucket))
    first = math.floor(now / bucket) * bucket - (n_buckets - 1) * bucket
    hits, looked = [0] * n_buckets, [0] * n_buckets
    outcomes: Counter[str] = Counter()
    for e in window.since(now - span):
        if e.cache is None:
            continue
        outcomes[e.cache] += 1
        index = int((e.t - first) // bucket)
        if 0 <= index < n_buckets and e.cache != "bypass":
            looked[index] += 1
            hits[index] += e.cache in ("hit", "semantic-hit")
    return {"t": [first + i * bucket for i in range(n_buckets)],
            "hit_rate": [h / n if n else None for h, n in zip(hits, looked, strict=True)],
            "lookups": looked, "outcomes": dict(outcomes)}


def reference_by_upstream(window: TrafficWindow, now: float, span: float = 300.0
                          ) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str | None], list[Event]] = {}
    for e in window.since(now - span):
        if e.upstream is not None:
            groups.setdefault((e.upstream, e.key_id), []).append(e)
    return [{"upstream": name, "key_id": key_id, "requests": len(events),
             "errors": sum(e.is_error for e in events),
             "latency_ms": latency_summary(e.duration_ms for e in events),
             "last_status": events[-1].status, "last_t": events[-1].t}
            for (name, key_id), events in sorted(groups.items(),
                                                 key=lambda kv: (kv[0][0], kv[0][1] or ""))]


def varied(rng: random.Random, t: float) -> Exchange:
    """A request of any kind: errors of each sort, streams, cache outcomes, several upstreams
    and keys or none, costs present, absent or odd, ids and numbers the row cannot hold."""
    status = rng.choice([200, 200, 200, 200, 400, 404, 429, 499, 500, 529, 0])
    error_type = rng.choice([None, None, "overloaded_error", "api_error"]) \
        if status < 400 else (None if status == 0 else "some_error")
    exchange = event(t, status=status, duration=rng.uniform(1, 30_000),
                     upstream=rng.choice([None, "anthropic", "bedrock", "openai"]),
                     key_id=rng.choice([None, "k1", "k2"]),
                     cache=rng.choice([None, None, "miss", "hit", "semantic-hit", "bypass"]),
                     error_type=error_type)
    if rng.random() < 0.2:  # answered without trying an upstream
        exchange.attempts.clear()
    exchange.timings.ttfb_ms = None if rng.random() < 0.3 else rng.uniform(1, 2000)
    cost = rng.choice([None, "0", "-0", "nan", "inf", "0.000123", f"{rng.random():.6f}"])
    if cost is not None:
        exchange.annotations["cost_usd"] = cost
    exchange.streaming = rng.random() < 0.5
    exchange.client_disconnected = rng.random() < 0.1
    exchange.response_model = rng.choice([None, "claude-a", "claude-b", "claude-c"])
    exchange.principal.name = rng.choice(["alice", "bob", "carol"])
    exchange.usage.update({"input_tokens": rng.choice([0, 7, rng.randrange(10 ** 6), 2 ** 33]),
                           "output_tokens": rng.randrange(5000)})
    if rng.random() < 0.05:
        exchange.id = "req_short"  # kept beside the strings, not in the row
    return exchange


@pytest.mark.parametrize("seed", range(4))
def test_the_column_readers_equal_the_event_readers(seed: int) -> None:
    rng = random.Random(seed)
    window = TrafficWindow(window_seconds=600.0, max_events=700)
    t = 1_800_000_000.0
    for _ in range(2000):  # more than fit: the ring wraps, the oldest fall out
        t += rng.uniform(0, 0.6)
        window.add(varied(rng, t))
    assert window._start != 0 and len(window) == 700  # a wrapped, full ring
    for now, span in [(t, 300.0), (t + 0.5, 900.0), (t + 30, 120.0), (t - 100, 60.0)]:
        assert window.traffic(now=now, span=span) == reference_traffic(window, now, span)
        assert window.traffic(now=now, span=span, bucket=7.0, recent_span=400.0) == \
            reference_traffic(window, now, span, 7.0, 400.0)
        assert window.cache_series(now=now, span=span) == \
            reference_cache_series(window, now, span)
        assert window.by_upstream(now=now, span=span) == \
            reference_by_upstream(window, now, span)
    traffic = window.traffic(now=t)
    assert traffic["recent_errors"] and traffic["errors"] and traffic["cost_usd"] > 0
    assert len(window.by_upstream(now=t)) > 4 and window.cache_series(now=t)["outcomes"]
