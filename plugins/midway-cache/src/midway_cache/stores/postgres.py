# ruff: noqa: S608 -- table names are config identifiers checked by _ident; values are bound
"""A store shared by many midway instances: PostgreSQL (asyncpg).

Tables ``<table>`` (entries), ``<table>_counters`` and ``<table>_locks`` (fill locks with an
expiry, so a crashed instance never holds one for long) in the configured schema. Vectors are
kept as float32 bytes and compared in this process.
"""

from __future__ import annotations

import time
from typing import Any

from midway_cache.stores.base import COUNTERS, Candidate, Entry, empty_stats


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


class PostgresStore:
    def __init__(self, dsn: str, schema: str, table: str, max_bytes: int,
                 max_entries: int) -> None:
        self.dsn = dsn
        self.schema = schema
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        s = _ident(schema)
        self.t = f"{s}.{_ident(table)}"
        self.tc = f"{s}.{_ident(table + '_counters')}"
        self.tl = f"{s}.{_ident(table + '_locks')}"
        self._pool: Any = None

    async def open(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=8)
        # several instances may start at once: serialise the DDL
        async with self._pool.acquire() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock(hashtext('midway_cache ddl'))")
            await db.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(self.schema)}")
            await db.execute(f"""
                CREATE TABLE IF NOT EXISTS {self.t} (
                    key TEXT PRIMARY KEY, tenant TEXT NOT NULL, partition TEXT,
                    created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION,
                    last_access DOUBLE PRECISION NOT NULL, size INTEGER NOT NULL,
                    body BYTEA NOT NULL, prompt TEXT, vector BYTEA,
                    tool_use BOOLEAN NOT NULL DEFAULT FALSE, cost_usd TEXT);
                CREATE INDEX IF NOT EXISTS {self._index('partition')}
                    ON {self.t} (partition) WHERE partition IS NOT NULL;
                CREATE INDEX IF NOT EXISTS {self._index('lru')} ON {self.t} (last_access);
                CREATE INDEX IF NOT EXISTS {self._index('tenant')} ON {self.t} (tenant);
                CREATE TABLE IF NOT EXISTS {self.tc} (
                    name TEXT PRIMARY KEY, value DOUBLE PRECISION NOT NULL);
                CREATE TABLE IF NOT EXISTS {self.tl} (
                    key TEXT PRIMARY KEY, until DOUBLE PRECISION NOT NULL);
            """)

    def _index(self, what: str) -> str:
        return _ident(f"{self.t.split('.')[-1].strip(chr(34))}_{what}")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def get(self, key: str, now: float) -> Entry | None:
        row = await self._pool.fetchrow(
            f"SELECT key, tenant, partition, created_at, expires_at, body, prompt, vector, "
            f"cost_usd FROM {self.t} WHERE key = $1 AND "
            f"(expires_at IS NULL OR expires_at > $2)", key, now)
        if row is None:
            return None
        return Entry.from_body(bytes(row["body"]), key=row["key"], tenant=row["tenant"],
                               partition=row["partition"], created_at=row["created_at"],
                               expires_at=row["expires_at"], prompt=row["prompt"],
                               vector=row["vector"], cost_usd=row["cost_usd"])

    async def put(self, entry: Entry) -> None:
        async with self._pool.acquire() as db:
            await db.execute(
                f"INSERT INTO {self.t} (key, tenant, partition, created_at, expires_at, "
                f"last_access, size, body, prompt, vector, tool_use, cost_usd) "
                f"VALUES ($1, $2, $3, $4, $5, $4, $6, $7, $8, $9, $10, $11) "
                f"ON CONFLICT (key) DO UPDATE SET tenant = excluded.tenant, "
                f"partition = excluded.partition, created_at = excluded.created_at, "
                f"expires_at = excluded.expires_at, last_access = excluded.last_access, "
                f"size = excluded.size, body = excluded.body, prompt = excluded.prompt, "
                f"vector = excluded.vector, tool_use = excluded.tool_use, "
                f"cost_usd = excluded.cost_usd",
                entry.key, entry.tenant, entry.partition, entry.created_at, entry.expires_at,
                entry.size, entry.body, entry.prompt, entry.vector, entry.tool_use,
                entry.cost_usd)
            if self.max_bytes or self.max_entries:
                await self._evict(db)

    async def _evict(self, db: Any) -> None:
        count, size = await db.fetchrow(f"SELECT count(*), coalesce(sum(size), 0) FROM {self.t}")
        over_bytes = self.max_bytes and size > self.max_bytes
        over_count = self.max_entries and count > self.max_entries
        if not (over_bytes or over_count):
            return
        # delete the least recently used until both caps hold again
        await db.execute(
            f"DELETE FROM {self.t} WHERE key IN (SELECT key FROM ("
            f"SELECT key, sum(size) OVER (ORDER BY last_access DESC, key) AS running, "
            f"row_number() OVER (ORDER BY last_access DESC, key) AS n FROM {self.t}) ranked "
            f"WHERE ($1 > 0 AND running > $1) OR ($2 > 0 AND n > $2))",
            self.max_bytes, self.max_entries)

    async def candidates(self, partition: str, now: float) -> list[Candidate]:
        rows = await self._pool.fetch(
            f"SELECT key, prompt, tool_use, vector FROM {self.t} WHERE partition = $1 AND "
            f"vector IS NOT NULL AND (expires_at IS NULL OR expires_at > $2)", partition, now)
        return [Candidate(key=r["key"], prompt=r["prompt"] or "", tool_use=r["tool_use"],
                          vector=bytes(r["vector"])) for r in rows]

    async def record(self, touched: dict[str, float], counters: dict[str, float]) -> None:
        async with self._pool.acquire() as db, db.transaction():
            if touched:
                await db.executemany(f"UPDATE {self.t} SET last_access = $1 WHERE key = $2",
                                     [(t, k) for k, t in touched.items()])
            if counters:
                await db.executemany(
                    f"INSERT INTO {self.tc} (name, value) VALUES ($1, $2) ON CONFLICT (name) "
                    f"DO UPDATE SET value = {self.tc}.value + excluded.value",
                    list(counters.items()))

    async def stats(self) -> dict[str, Any]:
        stats = empty_stats()
        count, size = await self._pool.fetchrow(
            f"SELECT count(*), coalesce(sum(size), 0) FROM {self.t}")
        stats["entries"], stats["bytes"] = int(count), int(size)
        for row in await self._pool.fetch(f"SELECT name, value FROM {self.tc}"):
            if row["name"] in COUNTERS:
                value = row["value"]
                stats[row["name"]] = value if row["name"] == "saved_usd" else int(value)
        return stats

    async def clear(self, tenant: str | None = None) -> int:
        if tenant is None:
            status = await self._pool.execute(f"DELETE FROM {self.t}")
        else:
            status = await self._pool.execute(f"DELETE FROM {self.t} WHERE tenant = $1", tenant)
        return int(status.split()[-1])

    async def purge(self, now: float) -> int:
        status = await self._pool.execute(
            f"DELETE FROM {self.t} WHERE expires_at IS NOT NULL AND expires_at <= $1", now)
        await self._pool.execute(f"DELETE FROM {self.tl} WHERE until <= $1", now)
        return int(status.split()[-1])

    async def lock(self, key: str, ttl: float) -> bool:
        now = time.time()
        row = await self._pool.fetchrow(
            f"INSERT INTO {self.tl} (key, until) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE "
            f"SET until = excluded.until WHERE {self.tl}.until <= $3 RETURNING key",
            key, now + ttl, now)
        return row is not None

    async def locked(self, key: str) -> bool:
        return bool(await self._pool.fetchval(
            f"SELECT 1 FROM {self.tl} WHERE key = $1 AND until > $2", key, time.time()))

    async def unlock(self, key: str) -> None:
        await self._pool.execute(f"DELETE FROM {self.tl} WHERE key = $1", key)
