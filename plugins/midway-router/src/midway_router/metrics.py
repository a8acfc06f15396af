"""The router's Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from midway.metrics import CountedFamily


class _KeyGauges(Collector):
    """In-flight requests and health per key, read from the live pool when scraped."""

    def __init__(self, rows: Callable[[], list[dict[str, Any]]]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[GaugeMetricFamily]:
        in_flight = GaugeMetricFamily("midway_router_key_in_flight",
                                      "Requests in flight, by upstream key.",
                                      labels=["upstream", "key"])
        usable = GaugeMetricFamily("midway_router_key_usable",
                                   "1 when the key is in rotation (not resting or disabled).",
                                   labels=["upstream", "key"])
        for row in self.rows():
            labels = [row["upstream"], row["key"] or "passthrough"]
            in_flight.add_metric(labels, row["in_flight"])
            usable.add_metric(labels, 1 if row["health"] in ("ok", "down") else 0)
        yield in_flight
        yield usable


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.registry = registry
        # counted on every request: without prometheus-client's per-update lock
        self.routed = CountedFamily("midway_router_routed",
                                    "Upstream choices, by rule and upstream.",
                                    ["rule", "upstream"], r)
        self.retries = Counter("midway_router_retries", "Attempts retried, by reason.",
                               ["reason"], registry=r)
        self.rests = Counter("midway_router_key_rests", "Keys sent to rest after 429/529.",
                             ["upstream"], registry=r)
        self.disabled = Counter("midway_router_keys_disabled",
                                "Keys taken out of rotation after 401/403.", ["upstream"],
                                registry=r)
        self.down = Counter("midway_router_upstream_down",
                            "Upstreams marked down after failures.", ["upstream"], registry=r)
        self.refused = Counter("midway_router_refused",
                               "Requests refused because no key or upstream was usable.",
                               ["status"], registry=r)

    def count_routed(self, rule: str, upstream: str) -> None:
        self.routed.inc((rule, upstream))

    def watch_keys(self, rows: Callable[[], list[dict[str, Any]]]) -> None:
        self.registry.register(_KeyGauges(rows))
