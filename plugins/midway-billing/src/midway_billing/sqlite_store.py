"""The embedded store: SQLite in WAL mode, one writer thread per process.

Every write is one ``BEGIN IMMEDIATE`` transaction, so reservations are atomic even when several
``midway serve --workers`` processes share the file. An instance proves it is alive by holding an
exclusive ``flock`` on ``billing-instances/<id>.lock`` next to the database; the kernel drops
the lock when the process dies (even by ``kill -9``), which is how reconciliation tells a crashed
instance's pending rows from a live one's.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

from midway.sqlite_wal import enable_wal
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

T = TypeVar("T")
_DAY = "strftime('%Y-%m-%d', created_at, 'unixepoch')"
RECONCILED_ERROR = "midway stopped before this attempt settled"


class SQLiteStore:
    def __init__(self, path: Path, instance: int) -> None:
        self.path = path
        self.instance = instance
        self.lock_dir = path.parent / "billing-instances"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="midway-billing")
        self._con: sqlite3.Connection | None = None
        self._lock: IO[bytes] | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        con = self._con
        assert con is not None, "store is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, con)

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run(con: sqlite3.Connection) -> T:
            con.execute("BEGIN IMMEDIATE")
            try:
                result = fn(con)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            return result

        return await self._run(run)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.lock_dir / f"{self.instance}.lock", "wb")  # noqa: SIM115, ASYNC230
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock = lock

        def connect() -> sqlite3.Connection:
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                  timeout=30)
            enable_wal(con)
            # NORMAL in WAL: a committed transaction survives a process crash (kill -9).
            con.execute("PRAGMA synchronous=NORMAL")
            con.executescript(SCHEMA.format(int="INTEGER", real="REAL"))
            return con

        self._con = await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        con = self._con
        if con is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, con.close)
            self._con = None
        self._executor.shutdown(wait=True)
        if self._lock is not None:
            os.unlink(self._lock.name)
            self._lock.close()
            self._lock = None

    async def write_ahead(self, row: dict[str, Any]) -> None:
        values = [row[c] for c in LEDGER_COLUMNS]
        await self._run(lambda con: con.execute(UPSERT_ROW, values))

    async def reserve(self, reservation: Reservation, limits: dict[str, int | None]
                      ) -> ReserveResult:
        amount = reservation.amount_pusd

        def run(con: sqlite3.Connection) -> ReserveResult:
            states: dict[str, tuple[int, int]] = {}
            for key in sorted(limits):
                row = con.execute("SELECT spent_pusd, reserved_pusd FROM billing_counters "
                                  "WHERE key = ?", (key,)).fetchone()
                if row is None:
                    sql, args = counter_init_sql(Bucket.from_key(key))
                    spent = int(con.execute(sql, args).fetchone()[0])
                    con.execute("INSERT INTO billing_counters VALUES (?, ?, 0)", (key, spent))
                    row = (spent, 0)
                states[key] = (int(row[0]), int(row[1]))
            for key in sorted(limits):
                limit = limits[key]
                spent, reserved = states[key]
                if limit is not None and spent + reserved + amount > limit:
                    return ReserveResult(False, states, key)
            for key in sorted(limits):
                con.execute("UPDATE billing_counters SET reserved_pusd = reserved_pusd + ? "
                            "WHERE key = ?", (amount, key))
                spent, reserved = states[key]
                states[key] = (spent, reserved + amount)
            con.execute("INSERT OR REPLACE INTO billing_reservations VALUES (?, ?, ?, ?, ?)",
                        (reservation.exchange_id, self.instance, amount,
                         "\n".join(reservation.buckets), reservation.created_at))
            return ReserveResult(True, states)

        return await self._tx(run)

    async def settle(self, rows: list[dict[str, Any]], reservation: Reservation | None,
                     charged_pusd: int) -> None:
        def run(con: sqlite3.Connection) -> None:
            for row in rows:
                con.execute(UPSERT_ROW, [row[c] for c in LEDGER_COLUMNS])
            if reservation is None:
                return
            gone = con.execute("DELETE FROM billing_reservations WHERE exchange_id = ?",
                               (reservation.exchange_id,)).rowcount
            if gone:  # else reconciliation already released it
                for key in reservation.buckets:
                    con.execute("UPDATE billing_counters SET reserved_pusd = reserved_pusd - ?, "
                                "spent_pusd = spent_pusd + ? WHERE key = ?",
                                (reservation.amount_pusd, charged_pusd, key))

        await self._tx(run)

    # -- crash recovery ----------------------------------------------------------------------

    def _dead(self, instance: int) -> IO[bytes] | None:
        """A locked handle on a dead instance's lock file, or None while it lives."""
        path = self.lock_dir / f"{instance}.lock"
        try:
            handle = open(path, "ab")  # noqa: SIM115
        except OSError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    async def reconcile(self) -> int:
        def others(con: sqlite3.Connection) -> list[int]:
            rows = con.execute(
                "SELECT DISTINCT instance FROM billing_ledger WHERE state = 'pending' "
                "UNION SELECT DISTINCT instance FROM billing_reservations").fetchall()
            return [int(r[0]) for r in rows if int(r[0]) != self.instance]

        fixed = 0
        for instance in await self._run(others):
            path = self.lock_dir / f"{instance}.lock"
            handle = self._dead(instance) if path.exists() else None
            if path.exists() and handle is None:
                continue  # alive
            fixed += await self._tx(lambda con, i=instance: _reconcile(con, i))  # type: ignore[misc]
            if handle is not None:
                path.unlink(missing_ok=True)
                handle.close()
        return fixed

    # -- reading -----------------------------------------------------------------------------

    async def counters(self, keys: list[str]) -> dict[str, tuple[int, int]]:
        def run(con: sqlite3.Connection) -> dict[str, tuple[int, int]]:
            out = {}
            for key in keys:
                row = con.execute("SELECT spent_pusd, reserved_pusd FROM billing_counters "
                                  "WHERE key = ?", (key,)).fetchone()
                if row is None:
                    sql, args = counter_init_sql(Bucket.from_key(key))
                    row = (con.execute(sql, args).fetchone()[0], 0)
                out[key] = (int(row[0]), int(row[1]))
            return out

        return await self._run(run)

    async def all_counters(self) -> dict[str, tuple[int, int]]:
        rows = await self._run(lambda con: con.execute(
            "SELECT key, spent_pusd, reserved_pusd FROM billing_counters").fetchall())
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    async def report(self, by: str, since: float | None, until: float | None
                     ) -> list[dict[str, Any]]:
        group = _DAY if by == "day" else GROUPS[by]
        where, args = time_filter(since, until)
        # Only fixed column names and expressions are formatted in; values are parameters.
        sql = (f"SELECT {group} AS key, {REPORT_SUMS} FROM billing_ledger{where} "  # noqa: S608
               f"GROUP BY {group} ORDER BY SUM(cost_pusd) DESC, key")
        return await self._run(lambda con: _dicts(con.execute(sql, args)))

    async def spend_series(self, bucket: int, by: str, since: float | None
                           ) -> list[tuple[float, str | None, int]]:
        group = GROUPS[by]
        where, args = time_filter(since, None)
        t = f"CAST(created_at / {int(bucket)} AS INTEGER) * {int(bucket)}"
        sql = (f"SELECT {t} AS t, {group} AS key, SUM(cost_pusd) "  # noqa: S608
               f"FROM billing_ledger{where} "
               f"GROUP BY t, key ORDER BY t, key")
        rows = await self._run(lambda con: con.execute(sql, args).fetchall())
        return [(float(r[0]), r[1], int(r[2])) for r in rows]

    async def rows(self, since: float | None = None) -> list[dict[str, Any]]:
        where, args = time_filter(since, None)
        sql = f"SELECT * FROM billing_ledger{where} ORDER BY created_at, id"  # noqa: S608
        return await self._run(lambda con: _dicts(con.execute(sql, args)))


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _reconcile(con: sqlite3.Connection, instance: int) -> int:
    """Release a dead instance's holds: an exchange that had reached the upstream is charged
    its estimate (the most it could have cost) on its last pending attempt row."""
    now = time.time()
    last: dict[str, str] = {}
    for row_id, exchange_id, _ in con.execute(
            "SELECT id, exchange_id, attempt FROM billing_ledger WHERE state = 'pending' "
            "AND instance = ? ORDER BY attempt", (instance,)).fetchall():
        last[exchange_id] = row_id
    for exchange_id, amount, buckets in con.execute(
            "SELECT exchange_id, amount_pusd, buckets FROM billing_reservations "
            "WHERE instance = ?", (instance,)).fetchall():
        charged = amount if exchange_id in last else 0
        for key in filter(None, buckets.split("\n")):
            con.execute("UPDATE billing_counters SET reserved_pusd = reserved_pusd - ?, "
                        "spent_pusd = spent_pusd + ? WHERE key = ?", (amount, charged, key))
        if charged:
            con.execute("UPDATE billing_ledger SET cost_pusd = ? WHERE id = ?",
                        (charged, last[exchange_id]))
    con.execute("DELETE FROM billing_reservations WHERE instance = ?", (instance,))
    return con.execute(
        "UPDATE billing_ledger SET state = 'reconciled', settled_at = ?, "
        "error = COALESCE(error, ?) WHERE state = 'pending' AND instance = ?",
        (now, RECONCILED_ERROR, instance)).rowcount
