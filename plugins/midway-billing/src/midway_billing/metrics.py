"""billing's Prometheus metrics, on the instance's registry."""

from __future__ import annotations

import re
import threading

from prometheus_client import CollectorRegistry, Counter

from midway.metrics import CountedFamily

# The unpriced counter is labelled with the model the client named, which a client may make
# up at will: beyond the catalogue's own ids, only this many distinct names get a series of
# their own (each looking like a model id), the rest count under OTHER.
UNPRICED_NAMED = 20
OTHER = "other"
_MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._:@/-]{0,79}")


class BillingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # added to on every priced request: without prometheus-client's per-update lock
        self.spend = CountedFamily("midway_billing_spend_usd", "Spend recorded, in USD.",
                                   ["team", "model"], registry)
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
        self._unpriced_names: set[str] = set()
        self._lock = threading.Lock()

    def spent(self, team: str, model: str, usd: float) -> None:
        """Add ``usd`` to ``midway_billing_spend_usd{team, model}``."""
        self.spend.inc((team, model), usd)

    def unpriced_label(self, model: str | None, listed: str | None) -> str:
        """The ``model`` label of ``midway_billing_unpriced``: the catalogue id ``model``
        is listed under (``listed``), else one of the first UNPRICED_NAMED id-shaped names
        seen, else OTHER."""
        if listed is not None:
            return listed
        name = (model or "").strip().lower()
        if not _MODEL_ID.fullmatch(name):
            return OTHER
        with self._lock:
            if name in self._unpriced_names:
                return name
            if len(self._unpriced_names) < UNPRICED_NAMED:
                self._unpriced_names.add(name)
                return name
        return OTHER
