"""billing's Prometheus metrics, on the instance's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class BillingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.spend = Counter("midway_billing_spend_usd", "Spend recorded, in USD.",
                             ["team", "model"], registry=registry)
        self.saved = Counter("midway_billing_saved_usd",
                             "Cost avoided by answers from midway's cache, in USD.",
                             ["team", "model"], registry=registry)
        self.refusals = Counter("midway_billing_budget_refusals",
                                "Requests refused by a hard budget.", ["budget"],
                                registry=registry)
        self.warnings = Counter("midway_billing_budget_warnings",
                                "Requests admitted past a budget's warning threshold.",
                                ["budget"], registry=registry)
        self.unpriced = Counter("midway_billing_unpriced",
                                "Requests whose model has no price (tokens kept, cost unknown).",
                                ["model"], registry=registry)
