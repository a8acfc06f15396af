"""What a billing store keeps, and the SQL both backends (SQLite, PostgreSQL) share.

Three tables:

* ``billing_ledger`` — one row per upstream attempt (id: midway's attempt id), written ahead as
  ``pending`` before the attempt is sent and ``settled`` after; requests answered without an
  upstream (cache hits, refusals) get one row of their own kind.
* ``billing_counters`` — spent and reserved picodollars of one budget bucket (a scope value in
  one window), changed in the same transaction as the ledger rows they account for.
* ``billing_reservations`` — estimates held for requests in flight, so that a crashed
  instance's holds can be found and released.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from midway_billing.budgets import Bucket

LEDGER_COLUMNS = (
    "id", "exchange_id", "attempt", "kind", "state", "instance", "created_at", "settled_at",
    "principal", "principal_name", "team", "project", "model", "priced_model", "upstream",
    "key_id", "path", "status", "error", "input_tokens", "output_tokens",
    "cache_write_5m_tokens", "cache_write_1h_tokens", "cache_read_tokens",
    "web_search_requests", "cost_pusd", "saved_pusd", "unpriced", "batch",
)

# Dialect-neutral DDL: {int} is INTEGER (SQLite) or BIGINT (PostgreSQL), {real} likewise.
SCHEMA = """
CREATE TABLE IF NOT EXISTS billing_ledger (
    id TEXT PRIMARY KEY,
    exchange_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    instance {int} NOT NULL,
    created_at {real} NOT NULL,
    settled_at {real},
    principal TEXT NOT NULL,
    principal_name TEXT,
    team TEXT,
    project TEXT,
    model TEXT,
    priced_model TEXT,
    upstream TEXT,
    key_id TEXT,
    path TEXT,
    status INTEGER,
    error TEXT,
    input_tokens {int} NOT NULL DEFAULT 0,
    output_tokens {int} NOT NULL DEFAULT 0,
    cache_write_5m_tokens {int} NOT NULL DEFAULT 0,
    cache_write_1h_tokens {int} NOT NULL DEFAULT 0,
    cache_read_tokens {int} NOT NULL DEFAULT 0,
    web_search_requests {int} NOT NULL DEFAULT 0,
    cost_pusd {int} NOT NULL DEFAULT 0,
    saved_pusd {int} NOT NULL DEFAULT 0,
    unpriced INTEGER NOT NULL DEFAULT 0,
    batch INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS billing_ledger_created ON billing_ledger (created_at);
CREATE INDEX IF NOT EXISTS billing_ledger_principal ON billing_ledger (principal, created_at);
CREATE INDEX IF NOT EXISTS billing_ledger_team ON billing_ledger (team, created_at);
CREATE INDEX IF NOT EXISTS billing_ledger_project ON billing_ledger (project, created_at);
CREATE INDEX IF NOT EXISTS billing_ledger_pending ON billing_ledger (state, instance);
CREATE INDEX IF NOT EXISTS billing_ledger_exchange ON billing_ledger (exchange_id);
CREATE TABLE IF NOT EXISTS billing_counters (
    key TEXT PRIMARY KEY,
    spent_pusd {int} NOT NULL DEFAULT 0,
    reserved_pusd {int} NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS billing_reservations (
    exchange_id TEXT PRIMARY KEY,
    instance {int} NOT NULL,
    amount_pusd {int} NOT NULL,
    buckets TEXT NOT NULL,
    created_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS billing_reservations_instance ON billing_reservations (instance);
"""

UPSERT_ROW = (  # only the fixed column names above are formatted in
    f"INSERT INTO billing_ledger ({', '.join(LEDGER_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in LEDGER_COLUMNS)}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in LEDGER_COLUMNS if c not in ("id", "created_at"))
)

# Counters start from what the ledger already holds for their window (a budget added later
# still sees earlier spend). Only the scope column names below are ever formatted into SQL.
SCOPE_COLUMNS = {"principal": "principal", "team": "team", "project": "project"}


def counter_init_sql(bucket: Bucket) -> tuple[str, list[Any]]:
    where = "kind = 'attempt' AND created_at >= ?"
    args: list[Any] = [bucket.start]
    column = SCOPE_COLUMNS.get(bucket.scope)
    if column is not None:
        where += f" AND {column} = ?"
        args.append(bucket.value)
    sql = f"SELECT COALESCE(SUM(cost_pusd), 0) FROM billing_ledger WHERE {where}"  # noqa: S608
    return sql, args


GROUPS = {"principal": "principal", "team": "team", "project": "project", "model": "model"}

REPORT_SUMS = """
    COUNT(DISTINCT exchange_id) AS requests,
    SUM(CASE WHEN kind = 'attempt' THEN 1 ELSE 0 END) AS attempts,
    SUM(CASE WHEN kind = 'attempt' THEN input_tokens ELSE 0 END) AS input_tokens,
    SUM(CASE WHEN kind = 'attempt' THEN output_tokens ELSE 0 END) AS output_tokens,
    SUM(CASE WHEN kind = 'attempt' THEN cache_write_5m_tokens ELSE 0 END)
        AS cache_write_5m_tokens,
    SUM(CASE WHEN kind = 'attempt' THEN cache_write_1h_tokens ELSE 0 END)
        AS cache_write_1h_tokens,
    SUM(CASE WHEN kind = 'attempt' THEN cache_read_tokens ELSE 0 END) AS cache_read_tokens,
    SUM(CASE WHEN kind = 'attempt' THEN web_search_requests ELSE 0 END) AS web_search_requests,
    SUM(cost_pusd) AS cost_pusd,
    SUM(saved_pusd) AS saved_pusd,
    SUM(CASE WHEN kind = 'cache_hit' THEN 1 ELSE 0 END) AS cache_hits,
    SUM(CASE WHEN kind = 'refused' THEN 1 ELSE 0 END) AS refused,
    SUM(unpriced) AS unpriced,
    SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending,
    SUM(CASE WHEN state = 'reconciled' THEN 1 ELSE 0 END) AS reconciled
"""
REPORT_INT_FIELDS = ("requests", "attempts", "input_tokens", "output_tokens",
                     "cache_write_5m_tokens", "cache_write_1h_tokens", "cache_read_tokens",
                     "web_search_requests", "cache_hits", "refused", "unpriced", "pending",
                     "reconciled")


def time_filter(since: float | None, until: float | None) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if since is not None:
        clauses.append("created_at >= ?")
        args.append(since)
    if until is not None:
        clauses.append("created_at < ?")
        args.append(until)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


@attrs.define
class Reservation:
    """An estimate held on some buckets while a request is in flight."""

    exchange_id: str
    amount_pusd: int
    buckets: list[str]  # bucket keys
    created_at: float


@attrs.frozen
class ReserveResult:
    admitted: bool
    # bucket key → (spent, reserved) picodollars, after the reservation if admitted
    states: dict[str, tuple[int, int]]
    refused_key: str | None = None


class Store(Protocol):
    """A ledger and budget store. Every method is atomic on its own."""

    instance: int

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write_ahead(self, row: dict[str, Any]) -> None:
        """Insert a pending attempt row (committed before the attempt is sent)."""
        ...

    async def reserve(self, reservation: Reservation, limits: dict[str, int | None]
                      ) -> ReserveResult:
        """Hold ``reservation.amount_pusd`` on every bucket, unless a limited bucket's spent +
        reserved + amount would exceed its limit (then nothing is held)."""
        ...

    async def settle(self, rows: list[dict[str, Any]], reservation: Reservation | None,
                     charged_pusd: int) -> None:
        """Write final rows; release the reservation and charge ``charged_pusd`` instead."""
        ...

    async def reconcile(self) -> int:
        """Settle rows and release holds of instances that died; how many rows were fixed."""
        ...

    async def counters(self, keys: list[str]) -> dict[str, tuple[int, int]]:
        """Spent and reserved of these buckets (from the ledger where not yet counted)."""
        ...

    async def all_counters(self) -> dict[str, tuple[int, int]]: ...

    async def report(self, by: str, since: float | None, until: float | None
                     ) -> list[dict[str, Any]]: ...

    async def spend_series(self, bucket: int, by: str, since: float | None
                           ) -> list[tuple[float, str | None, int]]: ...

    async def rows(self, since: float | None = None) -> list[dict[str, Any]]: ...
