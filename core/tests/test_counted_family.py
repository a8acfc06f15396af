"""``CountedFamily``: a plugin's counter counted without prometheus-client's per-update lock
scrapes as the ``Counter`` it stands for."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from midway.metrics import CountedFamily


def _samples(registry: CollectorRegistry) -> list[str]:
    # the exposition without the _created timestamps' values
    return [line.rsplit(" ", 1)[0] if "_created{" in line else line
            for line in generate_latest(registry).decode().splitlines()]


def test_scrapes_as_a_counter() -> None:
    registry, expected = CollectorRegistry(), CollectorRegistry()
    family = CountedFamily("t_spend_usd", "Spend.", ["team", "model"], registry)
    counter = Counter("t_spend_usd", "Spend.", ["team", "model"], registry=expected)
    for labels, amount in ((("a", "m"), 0.25), (("a", "m"), 0.5), (("", "n"), 1.0),
                           (("a", "m"), 0.0)):
        family.inc(labels, amount)
        counter.labels(*labels).inc(amount)
    family.inc(("b", "m"))
    counter.labels("b", "m").inc()
    assert _samples(registry) == _samples(expected)
    assert 't_spend_usd_total{model="m",team="a"} 0.75' in _samples(registry)


def test_created_is_when_first_counted() -> None:
    registry = CollectorRegistry()
    family = CountedFamily("t_routed", "Routed.", ["rule"], registry)
    family.inc(("all",))
    first = registry.get_sample_value("t_routed_created", {"rule": "all"})
    family.inc(("all",))
    assert registry.get_sample_value("t_routed_created", {"rule": "all"}) == first
    assert registry.get_sample_value("t_routed_total", {"rule": "all"}) == 2


def test_a_negative_amount_is_refused_as_by_a_counter() -> None:
    family = CountedFamily("t_spend_usd", "Spend.", ["team"], CollectorRegistry())
    with pytest.raises(ValueError):
        family.inc(("a",), -1.0)
    assert family.counts == {}
