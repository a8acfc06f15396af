"""``[billing]`` config: store, price overrides, budgets, attribution and estimates."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from midway_billing.budgets import Budget, parse_budgets
from midway_billing.pricing import PriceError, PriceTable
from midway_billing.store import Store

_KNOWN = {"store", "schema", "project_header", "prices", "budgets", "bytes_per_token",
          "reconcile_interval", "min_pool", "max_pool"}


@attrs.define
class BillingConfig:
    store: str  # "sqlite" (data_dir/billing.db), "sqlite:///path" or "postgresql://..."
    data_dir: Path
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
        return cls(store=str(table.get("store", "sqlite")), data_dir=data_dir,
                   schema=table.get("schema"),
                   project_header=str(table.get("project_header", "x-midway-project")),
                   prices=PriceTable.load(table.get("prices")),
                   budgets=parse_budgets(table.get("budgets")),
                   bytes_per_token=bytes_per_token,
                   reconcile_interval=float(table.get("reconcile_interval", 30)),
                   max_pool=int(table.get("max_pool", 10)))

    @property
    def store_label(self) -> str:
        """Where the store is, without any password in the URL."""
        if self.store.startswith(("postgres://", "postgresql://")):
            scheme, _, rest = self.store.partition("://")
            return f"{scheme}://{rest.rsplit('@', 1)[-1]}"
        return str(self.sqlite_path())

    def sqlite_path(self) -> Path:
        if self.store.startswith("sqlite:///"):
            return Path(self.store[len("sqlite:///") - 1:])
        if self.store.startswith("sqlite://"):
            return Path(self.store[len("sqlite://"):])
        return self.data_dir / "billing.db"

    def make_store(self) -> Store:
        # A random instance number: written on every row this process holds pending, so that
        # reconciliation knows whose rows they are.
        instance = secrets.randbelow(2**31 - 1) + 1
        if self.store.startswith(("postgres://", "postgresql://")):
            from midway_billing.pg_store import PostgresStore
            store: Store = PostgresStore(self.store, instance, schema=self.schema,
                                 max_pool=self.max_pool)
            return store
        if self.store == "sqlite" or self.store.startswith("sqlite:"):
            from midway_billing.sqlite_store import SQLiteStore
            return SQLiteStore(self.sqlite_path(), instance)
        raise PriceError(f"[billing] store must be 'sqlite', 'sqlite:///path' or a "
                         f"postgresql:// URL, not {self.store_label!r}")
