"""``midway_billing_unpriced_total{model}`` is labelled with a name the client chose: its
series stay bounded however many made-up models a client sends."""

from __future__ import annotations

import anthropic
from helpers import PLUGIN, ledger

from midway_billing.metrics import OTHER, UNPRICED_NAMED


def test_unpriced_model_label_is_bounded(midway_factory, fake_upstream) -> None:
    running = midway_factory(plugins=[PLUGIN])
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-metrics", max_retries=0)
    names = [f"claude-made-up-{i}" for i in range(UNPRICED_NAMED + 10)]
    junk = ["Claude Made Up\nwith spaces", "x" * 300]
    for model in [*names, names[0], *junk]:
        client.messages.create(model=model, max_tokens=8,
                               messages=[{"role": "user", "content": "hi"}])
    sent = len(names) + 1 + len(junk)
    rows = ledger(running, sent)
    assert all(r["unpriced"] == 1 for r in rows)
    samples = {s.labels["model"]: s.value
               for metric in running.midway.metrics.registry.collect()
               if metric.name == "midway_billing_unpriced"
               for s in metric.samples if s.name.endswith("_total")}
    # The first UNPRICED_NAMED names each have a series; the later ones and names that do
    # not look like a model id share "other"; nothing is lost.
    assert set(samples) == {*names[:UNPRICED_NAMED], OTHER}
    assert samples[names[0]] == 2
    assert samples[OTHER] == 10 + len(junk)
    assert sum(samples.values()) == sent


def test_spend_is_added_to_its_team_and_model_series() -> None:
    """``BillingMetrics.spent`` adds to its (team, model) series of
    ``midway_billing_spend_usd``, which scrapes as the ``Counter`` it was."""
    from prometheus_client import CollectorRegistry, Counter

    from midway_billing.metrics import BillingMetrics

    registry = CollectorRegistry()
    metrics = BillingMetrics(registry)
    expected = CollectorRegistry()
    counter = Counter("midway_billing_spend_usd", "Spend recorded, in USD.", ["team", "model"],
                      registry=expected)
    for team, model, usd in (("search", "claude-sonnet-4-6", 0.25),
                             ("search", "claude-sonnet-4-6", 0.5), ("", "claude-haiku-4-5", 1.0)):
        metrics.spent(team, model, usd)
        counter.labels(team, model).inc(usd)

    def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for metric in registry.collect()
                if metric.name == "midway_billing_spend_usd"
                for s in metric.samples if not s.name.endswith("_created")]

    assert samples(registry) == samples(expected)
    assert registry.get_sample_value("midway_billing_spend_usd_total",
                                     {"team": "search", "model": "claude-sonnet-4-6"}) == 0.75
    assert registry.get_sample_value("midway_billing_spend_usd_total",
                                     {"team": "", "model": "claude-haiku-4-5"}) == 1.0
