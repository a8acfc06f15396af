"""The routed counter, counted without prometheus-client's per-update lock, scrapes as the
``Counter`` it replaced."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from midway_router.metrics import RouterMetrics


def _samples(registry: CollectorRegistry) -> list[str]:
    # the exposition without the _created timestamps' values
    return [line.rsplit(" ", 1)[0] if "_created{" in line else line
            for line in generate_latest(registry).decode().splitlines()
            if "midway_router_routed" in line]


def test_routed_scrapes_as_a_counter() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    expected = CollectorRegistry()
    counter = Counter("midway_router_routed", "Upstream choices, by rule and upstream.",
                      ["rule", "upstream"], registry=expected)
    for rule, upstream in (("all", "anthropic"), ("all", "anthropic"), ("big", "bedrock")):
        metrics.count_routed(rule, upstream)
        counter.labels(rule, upstream).inc()
    assert _samples(registry) == _samples(expected)
    assert 'midway_router_routed_total{rule="all",upstream="anthropic"} 2.0' in \
        _samples(registry)


def test_routed_created_is_when_first_counted() -> None:
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    metrics.count_routed("all", "anthropic")
    first = registry.get_sample_value("midway_router_routed_created",
                                      {"rule": "all", "upstream": "anthropic"})
    metrics.count_routed("all", "anthropic")
    assert registry.get_sample_value("midway_router_routed_created",
                                     {"rule": "all", "upstream": "anthropic"}) == first
