"""``[billing]`` config: store, price overrides, budgets, attribution and estimates."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from midway.storage import StoreURL, new_instance, open_database, parse_store
from midway_billing.budgets import Budget, parse_budgets
from midway_billing.pricing import PriceError, PriceTable
from midway_billing.store import Store

LABEL = "[billing] store"

_KNOWN = {"store", "schema", "project_header", "prices", "budgets", "bytes_per_token",
          "reconcile_interval", "min_pool", "max_pool"}


@attrs.define
class BillingConfig:
    store: StoreURL  # the store setting, parsed by midway.storage.parse_store
    schema: str | None
    project_header: str
    prices: PriceTable
    budgets: list[Budget]
    bytes_per_token: float
    reconcile_interval: float
    max_pool: int

    @classmethod
    def from_table(cls, table: Mapping[str, Any], data_dir: Path) -> BillingConfig:
        unknown = set(table) - _KNOWN
        if unknown:
            raise PriceError(f"[billing]: unknown setting(s) {', '.join(sorted(unknown))}")
        bytes_per_token = float(table.get("bytes_per_token", 3))
        if bytes_per_token <= 0:
            raise PriceError("[billing] bytes_per_token must be positive")
        store = parse_store(table.get("store"), data_dir=data_dir,
                            default_file="billing.db", label=LABEL)
        return cls(store=store, schema=table.get("schema"),
                   project_header=str(table.get("project_header", "x-midway-project")),
                   prices=PriceTable.load(table.get("prices")),
                   budgets=parse_budgets(table.get("budgets")),
                   bytes_per_token=bytes_per_token,
                   reconcile_interval=float(table.get("reconcile_interval", 30)),
                   max_pool=int(table.get("max_pool", 10)))

    def make_store(self) -> Store:
        """This config's store (not opened yet), under a new random instance number."""
        db = open_database(self.store, schema=self.schema, label=LABEL, max_pool=self.max_pool)
        return Store(db, new_instance())
