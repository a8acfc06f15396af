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
    """``BillingMetrics.spent`` keeps each (team, model) series it made: every addition lands
    in the series ``Counter.labels`` names, and another pair gets its own."""
    from prometheus_client import CollectorRegistry

    from midway_billing.metrics import BillingMetrics

    metrics = BillingMetrics(CollectorRegistry())
    metrics.spent("search", "claude-sonnet-4-6", 0.25)
    metrics.spent("search", "claude-sonnet-4-6", 0.5)
    metrics.spent("", "claude-haiku-4-5", 1.0)
    assert metrics.spend.labels("search", "claude-sonnet-4-6")._value.get() == 0.75
    assert metrics.spend.labels("", "claude-haiku-4-5")._value.get() == 1.0
