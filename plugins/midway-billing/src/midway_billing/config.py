"""The ``[billing]`` config table (docs/billing.md), declared once: built by
``midway.options("billing", BillingConfig)`` at start-up and ``settings.options(...)`` in the
commands; a typo or a bad value is one :class:`midway.config.ConfigError` naming the key."""

from __future__ import annotations

import attrs

from midway.options import option, schema_name, store_option
from midway.storage import StoreURL, new_instance, open_database
from midway_billing.budgets import Budget, parse_budgets
from midway_billing.pricing import PriceTable
from midway_billing.store import Store

LABEL = "[billing] store"


@attrs.define
class BillingConfig:
    store: StoreURL = store_option(
        "billing.db", help="SQLite path, or postgresql://... (also env:NAME / file:PATH)")
    schema: str | None = option(None, converter=schema_name,
                                help="PostgreSQL schema to use (created if missing)")
    project_header: str = option("x-midway-project",
                                 help="request header naming the project to bill")
    prices: PriceTable = option(
        factory=PriceTable.load, converter=PriceTable.load,
        help="price overrides and new models, per model name (see Prices)")
    budgets: list[Budget] = option([], converter=parse_budgets,
                                   help="budgets ([[billing.budgets]], see Budgets)")
    bytes_per_token: float = option(3.0, gt=0,
                                    help="request bytes per input token, for reservations")
    reserve_output_tokens: int = option(
        4096, ge=0, help="output tokens a reservation assumes at most (the reserved output "
        "is min(max_tokens, this))")
    reconcile_interval: float = option(
        30.0, ge=0, help="seconds between reconciliations of dead instances' rows "
        "(0: only at start-up)")
    max_pool: int = option(10, ge=1, help="PostgreSQL: connections per instance")

    def make_store(self) -> Store:
        """This config's store (not opened yet), under a new random instance number."""
        db = open_database(self.store, schema=self.schema, label=LABEL, max_pool=self.max_pool)
        return Store(db, new_instance())
