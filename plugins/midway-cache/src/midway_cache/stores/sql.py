# ruff: noqa: S608 -- table names come from _names (checked identifiers); values are bound
"""The SQL store: an embedded SQLite file (the default) or PostgreSQL shared by many instances,
one implementation over :class:`midway.storage.Database`.

Every operation is one unit of work (``db.run``): on SQLite one hop to the store's thread. Three
tables: entries, counters (the stats, and the running totals eviction reads so that a put never
scans the table) and fill locks with an expiry (a crashed leader never holds one for long).
Vectors are kept as float32 bytes and compared in this process.
"""

from __future__ import annotations

import time
from string import Template
from typing import Any

from midway.storage import Database, Row, Schema, Tx
from midway.storage.schema import check_identifier
from midway_cache.stores.base import COUNTERS, Candidate, Entry, empty_stats

_DDL = Template("""
CREATE TABLE IF NOT EXISTS $entries (
    key TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    partition TEXT,
    created_at {real} NOT NULL,
    expires_at {real},
    last_access {real} NOT NULL,
    size INTEGER NOT NULL,
    body {blob} NOT NULL,
    prompt TEXT,
    vector {blob},
    tool_use BOOLEAN NOT NULL DEFAULT FALSE,
    cost_usd TEXT
);
CREATE INDEX IF NOT EXISTS ${entries}_partition ON $entries (partition)
    WHERE partition IS NOT NULL;
CREATE INDEX IF NOT EXISTS ${entries}_lru ON $entries (last_access);
CREATE INDEX IF NOT EXISTS ${entries}_tenant ON $entries (tenant);
CREATE INDEX IF NOT EXISTS ${entries}_expiry ON $entries (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS $counters (name TEXT PRIMARY KEY, value {real} NOT NULL);
CREATE TABLE IF NOT EXISTS $locks (key TEXT PRIMARY KEY, until {real} NOT NULL)
""")

_COLUMNS = "key, tenant, partition, created_at, expires_at, body, prompt, vector, cost_usd"
# running totals in the counters table, read by eviction (``stats`` counts exactly)
_ENTRIES, _BYTES = "live_entries", "live_bytes"


def _names(table: str | None) -> dict[str, str]:
    """The tables: ``<table>``, ``<table>_counters``, ``<table>_locks`` (PostgreSQL's ``table``
    setting); ``None`` keeps the names cache.db files have always had."""
    if table is None:
        return {"entries": "entries", "counters": "counters", "locks": "locks"}
    check_identifier(table, "[cache] table")
    return {"entries": table, "counters": f"{table}_counters", "locks": f"{table}_locks"}


def cache_schema(table: str | None) -> Schema:
    """The cache's tables (see :func:`_names`)."""
    return Schema("cache", _DDL.substitute(_names(table)))


class SQLStore:
    """Entries, counters and fill locks in a :class:`Database` (not opened yet)."""

    def __init__(self, db: Database, table: str | None, max_bytes: int,
                 max_entries: int) -> None:
        self.db = db
        self.schema = cache_schema(table)
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        names = _names(table)
        self.t, self.tc, self.tl = names["entries"], names["counters"], names["locks"]
        self._get = (f"SELECT {_COLUMNS} FROM {self.t} WHERE key = ? AND "
                     "(expires_at IS NULL OR expires_at > ?)")
        self._upsert = (
            f"INSERT INTO {self.t} (key, tenant, partition, created_at, expires_at, "
            "last_access, size, body, prompt, vector, tool_use, cost_usd) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET tenant = excluded.tenant, "
            "partition = excluded.partition, created_at = excluded.created_at, "
            "expires_at = excluded.expires_at, last_access = excluded.last_access, "
            "size = excluded.size, body = excluded.body, prompt = excluded.prompt, "
            "vector = excluded.vector, tool_use = excluded.tool_use, "
            "cost_usd = excluded.cost_usd")
        self._increment = (f"INSERT INTO {self.tc} (name, value) VALUES (?, ?) ON CONFLICT "
                           f"(name) DO UPDATE SET value = {self.tc}.value + excluded.value")
        self._set = (f"INSERT INTO {self.tc} (name, value) VALUES (?, ?) ON CONFLICT (name) "
                     "DO UPDATE SET value = excluded.value")

    async def open(self) -> None:
        await self.db.open(self.schema)
        await self.db.run(self._recount)

    async def close(self) -> None:
        await self.db.close()


    async def ping(self) -> str | None:
        return await self.db.ping()

    async def get(self, key: str, now: float) -> Entry | None:
        row = await self.db.run(lambda tx: tx.fetchone(self._get, key, now))
        return None if row is None else _entry(row)

    async def put(self, entry: Entry) -> None:
        async def write(tx: Tx) -> None:
            await self._hold_totals(tx)
            old = await tx.fetchval(f"SELECT size FROM {self.t} WHERE key = ?", entry.key)
            await tx.execute(
                self._upsert, entry.key, entry.tenant, entry.partition, entry.created_at,
                entry.expires_at, entry.created_at, entry.size, entry.body, entry.prompt,
                entry.vector, entry.tool_use, entry.cost_usd)
            count, size = await self._add_totals(tx, 0 if old is not None else 1,
                                                 entry.size - (old or 0))
            await self._evict(tx, count, size)

        await self.db.run(write)

    async def _hold_totals(self, tx: Tx) -> None:
        """Lock the running totals first: every unit that writes entries or counters takes
        this row lock before any other (PostgreSQL), so the totals are exact and writers never
        deadlock. (SQLite's write transactions are serial anyway.)"""
        # one row: a statement locking two may take them in either order
        await tx.execute(f"UPDATE {self.tc} SET value = value WHERE name = ?", _ENTRIES)

    async def _add_totals(self, tx: Tx, entries: float, size: float) -> tuple[float, float]:
        """Add to the running totals; the new ones (entries, bytes)."""
        rows = await tx.fetch(
            f"UPDATE {self.tc} SET value = value + CASE WHEN name = ? THEN "
            "CAST(? AS DOUBLE PRECISION) ELSE CAST(? AS DOUBLE PRECISION) END "
            "WHERE name IN (?, ?) RETURNING name, value", _ENTRIES, entries, size, _ENTRIES,
            _BYTES)
        totals = {r["name"]: r["value"] for r in rows}
        return totals.get(_ENTRIES, 0), totals.get(_BYTES, 0)

    async def _evict(self, tx: Tx, count: float, size: float) -> None:
        # Least recently used first, in batches (a twentieth when over the byte cap), until
        # both caps hold.
        while (self.max_bytes and size > self.max_bytes) or \
                (self.max_entries and count > self.max_entries):
            over = max(1, int(count) - self.max_entries if self.max_entries else 0,
                       int(count) // 20 if self.max_bytes and size > self.max_bytes else 0)
            gone = await tx.fetch(f"DELETE FROM {self.t} WHERE key IN (SELECT key FROM "
                                  f"{self.t} ORDER BY last_access LIMIT ?) RETURNING size", over)
            if not gone:
                break
            count, size = await self._add_totals(tx, -len(gone),
                                                 -sum(r["size"] for r in gone))

    async def _recount(self, tx: Tx) -> None:
        row = await tx.fetchone(f"SELECT count(*) AS n, coalesce(sum(size), 0) AS total "
                                f"FROM {self.t}")
        assert row is not None
        await tx.executemany(self._set, [(_ENTRIES, row["n"]), (_BYTES, row["total"])])

    async def candidates(self, partition: str, now: float) -> list[Candidate]:
        rows = await self.db.fetch(
            f"SELECT key, prompt, tool_use, vector FROM {self.t} WHERE partition = ? AND "
            "vector IS NOT NULL AND (expires_at IS NULL OR expires_at > ?)", partition, now)
        return [Candidate(key=r["key"], prompt=r["prompt"] or "", tool_use=bool(r["tool_use"]),
                          vector=bytes(r["vector"])) for r in rows]

    async def record(self, touched: dict[str, float], counters: dict[str, float]) -> None:
        async def write(tx: Tx) -> None:
            await self._hold_totals(tx)  # an eviction may be deleting the entries touched
            if touched:
                await tx.executemany(f"UPDATE {self.t} SET last_access = ? WHERE key = ?",
                                     [(t, k) for k, t in touched.items()])
            if counters:
                await tx.executemany(self._increment, list(counters.items()))

        await self.db.run(write)

    async def stats(self) -> dict[str, Any]:
        async def read(tx: Tx) -> dict[str, Any]:
            stats = empty_stats()
            row = await tx.fetchone(f"SELECT count(*) AS n, coalesce(sum(size), 0) AS total "
                                    f"FROM {self.t}")
            assert row is not None
            stats["entries"], stats["bytes"] = int(row["n"]), int(row["total"])
            for counter in await tx.fetch(f"SELECT name, value FROM {self.tc}"):
                name, value = counter["name"], counter["value"]
                if name in COUNTERS:
                    stats[name] = value if name == "saved_usd" else int(value)
            return stats

        return await self.db.run(read)

    async def clear(self, tenant: str | None = None) -> int:
        async def write(tx: Tx) -> int:
            await self._hold_totals(tx)
            if tenant is None:
                deleted = await tx.execute(f"DELETE FROM {self.t}")
            else:
                deleted = await tx.execute(f"DELETE FROM {self.t} WHERE tenant = ?", tenant)
            await self._recount(tx)
            return deleted

        return await self.db.run(write)

    async def purge(self, now: float) -> int:
        async def write(tx: Tx) -> int:
            await self._hold_totals(tx)
            deleted = await tx.execute(f"DELETE FROM {self.t} WHERE expires_at IS NOT NULL "
                                       "AND expires_at <= ?", now)
            await tx.execute(f"DELETE FROM {self.tl} WHERE until <= ?", now)
            await self._recount(tx)
            return deleted

        return await self.db.run(write)

    async def lock(self, key: str, ttl: float) -> bool:
        now = time.time()
        row = await self.db.fetchone(
            f"INSERT INTO {self.tl} (key, until) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
            f"SET until = excluded.until WHERE {self.tl}.until <= ? RETURNING key",
            key, now + ttl, now)
        return row is not None

    async def locked(self, key: str) -> bool:
        return bool(await self.db.fetchval(
            f"SELECT 1 FROM {self.tl} WHERE key = ? AND until > ?", key, time.time()))

    async def unlock(self, key: str) -> None:
        await self.db.execute(f"DELETE FROM {self.tl} WHERE key = ?", key)


def _entry(row: Row) -> Entry:
    vector = row["vector"]
    return Entry.from_body(bytes(row["body"]), key=row["key"], tenant=row["tenant"],
                           partition=row["partition"], created_at=row["created_at"],
                           expires_at=row["expires_at"], prompt=row["prompt"],
                           vector=None if vector is None else bytes(vector),
                           cost_usd=row["cost_usd"])
