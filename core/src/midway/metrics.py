"""Prometheus metrics of the core; plugins add theirs on ``midway.metrics.registry``.

The request path only bumps plain counters in dicts (about a microsecond); a collector turns
them into Prometheus families when ``/metrics`` is scraped. prometheus-client's own metric
objects take a lock per update, which costs more than the rest of the relay's bookkeeping.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
           300.0)


class _Histogram:
    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.total += value
        self.n += 1

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class Metrics(Collector):
    """The core's metrics, on a registry of their own (one per instance)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # (status, model, upstream, principal) -> count
        self.requests: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)
        self.latency: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self.ttfb: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self.inflight = 0
        self.tokens: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.plugin_errors: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.attempts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.open_streams = 0
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("midway_requests", "Requests answered, by outcome.",
                                       labels=["status", "model", "upstream", "principal"])
        for req_labels, count in list(self.requests.items()):
            requests.add_metric(list(req_labels), count)
        yield requests
        for name, doc, hists in (
                ("midway_request_duration_seconds", "Arrival to last byte.", self.latency),
                ("midway_ttfb_seconds", "Arrival to first byte.", self.ttfb)):
            family = HistogramMetricFamily(name, doc, labels=["streaming"])
            for kind, hist in list(hists.items()):
                family.add_metric([kind], hist.buckets(), hist.total)
            yield family
        yield GaugeMetricFamily("midway_inflight_requests", "Requests being served.",
                                value=self.inflight)
        yield GaugeMetricFamily("midway_open_streams", "Streams being relayed.",
                                value=self.open_streams)
        tokens = CounterMetricFamily("midway_tokens", "Tokens by kind, from final usage.",
                                     labels=["kind", "model"])
        for labels, count in list(self.tokens.items()):
            tokens.add_metric(list(labels), count)
        yield tokens
        errors = CounterMetricFamily("midway_plugin_errors", "Plugin failures, by hook.",
                                     labels=["plugin", "hook"])
        for labels, count in list(self.plugin_errors.items()):
            errors.add_metric(list(labels), count)
        yield errors
        attempts = CounterMetricFamily("midway_upstream_attempts",
                                       "Upstream attempts, by upstream and outcome.",
                                       labels=["upstream", "outcome"])
        for labels, count in list(self.attempts.items()):
            attempts.add_metric(list(labels), count)
        yield attempts
