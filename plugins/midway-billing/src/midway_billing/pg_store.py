"""The shared store: PostgreSQL through asyncpg, for several midway instances.

Reservations lock their budget counters with ``SELECT ... FOR UPDATE`` in a fixed (sorted) order
inside one transaction, so admission is atomic across every instance and cannot deadlock. Each
instance holds a session advisory lock on its own number for as long as it lives; PostgreSQL
drops it when the connection dies (a crash, ``kill -9``), which is how reconciliation tells a
crashed instance's pending rows from a live one's.
"""

from __future__ import annotations

import re
import time
from typing import Any

import asyncpg

from midway_billing.budgets import Bucket
from midway_billing.store import (
    GROUPS,
    LEDGER_COLUMNS,
    REPORT_SUMS,
    SCHEMA,
    UPSERT_ROW,
    Reservation,
    ReserveResult,
    counter_init_sql,
    time_filter,
)

_LOCK_CLASS = 0x6D77  # "mw": the first key of billing's advisory locks
_DAY = "to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
RECONCILED_ERROR = "midway stopped before this attempt settled"


def pg(sql: str) -> str:
    """``?`` placeholders to asyncpg's ``$n`` (the shared SQL holds no literal ``?``)."""
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return re.sub(r"\?", number, sql)


_UPSERT = pg(UPSERT_ROW)


class PostgresStore:
    def __init__(self, dsn: str, instance: int, schema: str | None = None,
                 max_pool: int = 10) -> None:
        if schema is not None and not _IDENT.match(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        self.dsn = dsn
        self.instance = instance
        self.schema = schema
        self.max_pool = max_pool
        self._pool: asyncpg.Pool | None = None
        self._lock_conn: asyncpg.Connection | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "store is not open"
        return self._pool

    async def open(self) -> None:
        settings = {"search_path": self.schema} if self.schema else {}
        self._lock_conn = await asyncpg.connect(self.dsn, server_settings=settings)
        await self._lock_conn.execute("SELECT pg_advisory_lock($1, $2)", _LOCK_CLASS,
                                      self.instance)
        if self.schema:
            await self._lock_conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        # Serialise DDL between instances starting together.
        await self._lock_conn.execute("SELECT pg_advisory_lock($1, 0)", _LOCK_CLASS)
        try:
            await self._lock_conn.execute(SCHEMA.format(int="BIGINT", real="DOUBLE PRECISION"))
        finally:
            await self._lock_conn.execute("SELECT pg_advisory_unlock($1, 0)", _LOCK_CLASS)
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.max_pool,
                                               server_settings=settings)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._lock_conn is not None:
            await self._lock_conn.close()
            self._lock_conn = None

    async def write_ahead(self, row: dict[str, Any]) -> None:
        await self.pool.execute(_UPSERT, *[row[c] for c in LEDGER_COLUMNS])

    async def reserve(self, reservation: Reservation, limits: dict[str, int | None]
                      ) -> ReserveResult:
        amount = reservation.amount_pusd
        keys = sorted(limits)
        async with self.pool.acquire() as con:
            for key in keys:
                exists = await con.fetchval("SELECT 1 FROM billing_counters WHERE key = $1", key)
                if not exists:
                    sql, args = counter_init_sql(Bucket.from_key(key))
                    spent = int(await con.fetchval(pg(sql), *args))
                    await con.execute("INSERT INTO billing_counters VALUES ($1, $2, 0) "
                                      "ON CONFLICT (key) DO NOTHING", key, spent)
            async with con.transaction():
                states: dict[str, tuple[int, int]] = {}
                for key in keys:  # sorted: every instance locks in the same order
                    row = await con.fetchrow("SELECT spent_pusd, reserved_pusd FROM "
                                             "billing_counters WHERE key = $1 FOR UPDATE", key)
                    states[key] = (int(row[0]), int(row[1]))
                for key in keys:
                    limit = limits[key]
                    spent, reserved = states[key]
                    if limit is not None and spent + reserved + amount > limit:
                        return ReserveResult(False, states, key)
                await con.execute("UPDATE billing_counters SET reserved_pusd = reserved_pusd "
                                  "+ $1 WHERE key = ANY($2::text[])", amount, keys)
                for key in keys:
                    spent, reserved = states[key]
                    states[key] = (spent, reserved + amount)
                await con.execute(
                    "INSERT INTO billing_reservations VALUES ($1, $2, $3, $4, $5) "
                    "ON CONFLICT (exchange_id) DO NOTHING", reservation.exchange_id,
                    self.instance, amount, "\n".join(reservation.buckets),
                    reservation.created_at)
                return ReserveResult(True, states)

    async def settle(self, rows: list[dict[str, Any]], reservation: Reservation | None,
                     charged_pusd: int) -> None:
        async with self.pool.acquire() as con, con.transaction():
            await con.executemany(_UPSERT, [[row[c] for c in LEDGER_COLUMNS] for row in rows])
            if reservation is None:
                return
            gone = await con.fetchval("DELETE FROM billing_reservations WHERE exchange_id = $1 "
                                      "RETURNING 1", reservation.exchange_id)
            if gone:  # else reconciliation already released it
                await _release(con, sorted(reservation.buckets), reservation.amount_pusd,
                               charged_pusd)

    async def reconcile(self) -> int:
        instances = await self.pool.fetch(
            "SELECT DISTINCT instance FROM billing_ledger WHERE state = 'pending' "
            "UNION SELECT DISTINCT instance FROM billing_reservations")
        fixed = 0
        for record in instances:
            instance = int(record[0])
            if instance == self.instance:
                continue
            async with self.pool.acquire() as con:
                # Free only when the instance's session (and so the instance) is gone.
                if not await con.fetchval("SELECT pg_try_advisory_lock($1, $2)", _LOCK_CLASS,
                                          instance):
                    continue
                try:
                    async with con.transaction():
                        fixed += await _reconcile(con, instance)
                finally:
                    await con.execute("SELECT pg_advisory_unlock($1, $2)", _LOCK_CLASS,
                                      instance)
        return fixed

    async def counters(self, keys: list[str]) -> dict[str, tuple[int, int]]:
        out = {}
        async with self.pool.acquire() as con:
            for key in keys:
                row = await con.fetchrow("SELECT spent_pusd, reserved_pusd FROM "
                                         "billing_counters WHERE key = $1", key)
                if row is None:
                    sql, args = counter_init_sql(Bucket.from_key(key))
                    out[key] = (int(await con.fetchval(pg(sql), *args)), 0)
                else:
                    out[key] = (int(row[0]), int(row[1]))
        return out

    async def all_counters(self) -> dict[str, tuple[int, int]]:
        rows = await self.pool.fetch("SELECT key, spent_pusd, reserved_pusd "
                                     "FROM billing_counters")
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    async def report(self, by: str, since: float | None, until: float | None
                     ) -> list[dict[str, Any]]:
        group = _DAY if by == "day" else GROUPS[by]
        where, args = time_filter(since, until)
        # Only fixed column names and expressions are formatted in; values are parameters.
        sql = (f"SELECT {group} AS key, {REPORT_SUMS} FROM billing_ledger{where} "  # noqa: S608
               f"GROUP BY 1 ORDER BY SUM(cost_pusd) DESC, 1")
        return [dict(r) for r in await self.pool.fetch(pg(sql), *args)]

    async def spend_series(self, bucket: int, by: str, since: float | None
                           ) -> list[tuple[float, str | None, int]]:
        group = GROUPS[by]
        where, args = time_filter(since, None)
        t = f"floor(created_at / {int(bucket)}) * {int(bucket)}"
        sql = (f"SELECT {t} AS t, {group} AS key, SUM(cost_pusd) "  # noqa: S608
               f"FROM billing_ledger{where} GROUP BY 1, 2 ORDER BY 1, 2")
        rows = await self.pool.fetch(pg(sql), *args)
        return [(float(r[0]), r[1], int(r[2])) for r in rows]

    async def rows(self, since: float | None = None) -> list[dict[str, Any]]:
        where, args = time_filter(since, None)
        sql = f"SELECT * FROM billing_ledger{where} ORDER BY created_at, id"  # noqa: S608
        return [dict(r) for r in await self.pool.fetch(pg(sql), *args)]


async def _release(con: asyncpg.Connection, keys: list[str], amount: int, charged: int
                   ) -> None:
    # One key at a time, in sorted order: the same lock order as reservations, no deadlock.
    for key in sorted(keys):
        await con.execute("UPDATE billing_counters SET reserved_pusd = reserved_pusd - $1, "
                          "spent_pusd = spent_pusd + $2 WHERE key = $3", amount, charged, key)


async def _reconcile(con: asyncpg.Connection, instance: int) -> int:
    """As the SQLite store's: release holds, charge estimates of attempts that were sent."""
    last: dict[str, str] = {}
    for record in await con.fetch("SELECT id, exchange_id FROM billing_ledger WHERE state = "
                                  "'pending' AND instance = $1 ORDER BY attempt", instance):
        last[record["exchange_id"]] = record["id"]
    for record in await con.fetch("SELECT exchange_id, amount_pusd, buckets FROM "
                                  "billing_reservations WHERE instance = $1 FOR UPDATE",
                                  instance):
        amount = int(record["amount_pusd"])
        charged = amount if record["exchange_id"] in last else 0
        keys = sorted(filter(None, record["buckets"].split("\n")))
        await _release(con, keys, amount, charged)
        if charged:
            await con.execute("UPDATE billing_ledger SET cost_pusd = $1 WHERE id = $2",
                              charged, last[record["exchange_id"]])
    await con.execute("DELETE FROM billing_reservations WHERE instance = $1", instance)
    status = await con.execute(
        "UPDATE billing_ledger SET state = 'reconciled', settled_at = $1, "
        "error = COALESCE(error, $2) WHERE state = 'pending' AND instance = $3",
        time.time(), RECONCILED_ERROR, instance)
    return int(status.split()[-1])
