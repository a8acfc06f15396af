"""The live-traffic window: rates, percentiles, expiry, cache and upstream breakdowns."""

from __future__ import annotations

from midway.exchange import Upstream
from midway.testing import make_exchange
from midway_dashboard.window import Event, TrafficWindow, event_from_exchange, percentile


def event(t: float, status: int = 200, duration: float = 100.0, **fields: object) -> Event:
    values: dict[str, object] = dict(
        t=t, id=f"mw_{t}", status=status, duration_ms=duration, ttfb_ms=duration / 2,
        streaming=False, model="claude-sonnet-4-6", principal="alice", upstream="default",
        key_id=None, cache=None, error_type=None, client_disconnected=False, input_tokens=10,
        output_tokens=5)
    values.update(fields)
    return Event(**values)  # type: ignore[arg-type]


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
    assert len(window.events) == 5 and window.total == 10
    data = window.traffic(now=1000.0 + 200)
    assert data["requests"] == 0 and len(window.events) == 0
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
    ev = event_from_exchange(exchange)
    assert (ev.status, ev.duration_ms, ev.cache, ev.cost_usd) == (200, 42.0, "miss", 0.0012)
    assert (ev.input_tokens, ev.output_tokens, ev.model) == (12, 7, "claude-sonnet-4-6")
    # No attempt was made: the upstream was chosen but never reached.
    assert ev.upstream is None


def test_event_model_is_the_answers_and_the_request_is_parsed_only_without_one() -> None:
    answered = make_exchange()
    answered.status = 200
    answered.response_model = "claude-sonnet-4-6-20260101"
    assert event_from_exchange(answered).model == "claude-sonnet-4-6-20260101"
    # the request body was not parsed for it (a large body costs the relay)
    assert not answered.request.parsed

    refused = make_exchange()
    refused.status = 529  # an error answer names no model: the request's is shown
    assert event_from_exchange(refused).model == "claude-sonnet-4-6"
