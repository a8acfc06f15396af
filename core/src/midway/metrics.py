"""Prometheus metrics of the core; plugins add theirs on ``midway.metrics.registry``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The core's metrics, on a registry of their own (one per instance, so tests can run
    several in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("midway_requests", "Requests answered, by outcome.",
                                ["status", "model", "upstream", "principal"], registry=r)
        self.latency = Histogram("midway_request_duration_seconds",
                                 "Time from arrival to the last byte.", ["streaming"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("midway_ttfb_seconds", "Time from arrival to the first byte.",
                              ["streaming"], buckets=_LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("midway_inflight_requests", "Requests being served.",
                              ["streaming"], registry=r)
        self.tokens = Counter("midway_tokens", "Tokens by kind, from final usage.",
                              ["kind", "model"], registry=r)
        self.plugin_errors = Counter("midway_plugin_errors", "Plugin failures, by hook.",
                                     ["plugin", "hook"], registry=r)
        self.upstream_attempts = Counter("midway_upstream_attempts",
                                         "Upstream attempts, by upstream and outcome.",
                                         ["upstream", "outcome"], registry=r)
