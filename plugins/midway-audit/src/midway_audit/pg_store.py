"""The shared store: PostgreSQL through asyncpg, for several midway instances.

Appends lock the single chain row (``SELECT ... FOR UPDATE``) in the same transaction that
inserts the batch and moves the head, so concurrent instances append one after another and
the chain stays a single, verifiable sequence.

An instance writing intents holds a session advisory lock on its number for as long as it
lives; PostgreSQL drops it when the connection dies (a crash, ``kill -9``), which is how
recovery tells a dead instance's intents from a live one's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import asyncpg

from midway_audit.chain import GENESIS, Head, StoredRow, link_hash
from midway_audit.record import Row
from midway_audit.store import (
    COLUMNS,
    SUMMARY_COLUMNS,
    UNREFERENCED,
    Filter,
    KnownParts,
    expand_rows,
    full_record,
    summary_record,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq BIGINT PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    request_id TEXT NOT NULL,
    upstream_request_id TEXT,
    principal TEXT,
    model TEXT,
    status INTEGER,
    data TEXT NOT NULL,
    request_body TEXT,
    response_body TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_records_ts ON audit_records (ts);
CREATE INDEX IF NOT EXISTS audit_records_request_id ON audit_records (request_id);
CREATE INDEX IF NOT EXISTS audit_records_principal ON audit_records (principal, ts);
CREATE TABLE IF NOT EXISTS audit_parts (
    digest TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_part_refs (
    digest TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (digest, seq)
);
CREATE INDEX IF NOT EXISTS audit_part_refs_seq ON audit_part_refs (seq);
CREATE TABLE IF NOT EXISTS audit_intents (
    request_id TEXT PRIMARY KEY,
    instance INTEGER NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_intents_instance ON audit_intents (instance);
CREATE TABLE IF NOT EXISTS audit_chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    head_hash TEXT NOT NULL,
    anchor_seq BIGINT NOT NULL,
    anchor_hash TEXT NOT NULL
);
"""
_SCHEMA_LOCK = 0x6D69647761790001  # advisory lock id: "midway" + 1; instances create in turn
_INSTANCE_LOCKS = 0x6D61  # "ma": the first key of the audit instances' advisory locks


def _q(n: int) -> str:
    return f"${n}"


class PostgresStore:
    def __init__(self, dsn: str, schema: str | None = None) -> None:
        self.dsn = dsn
        self.schema = schema
        self._pool: asyncpg.Pool | None = None
        self._known = KnownParts()
        self._lock_conn: asyncpg.Connection | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "store not open"
        return self._pool

    async def open(self) -> None:
        settings = {"search_path": self.schema} if self.schema else None
        # command_timeout: a hung connection fails the batch (which is retried) instead of
        # stalling the writer, and with it every request waiting on a full queue
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4,
                                               server_settings=settings, command_timeout=30)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            if self.schema:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{_ident(self.schema)}"')
            await conn.execute(SCHEMA)
            await conn.execute("INSERT INTO audit_chain VALUES (1, 0, $1, 0, $1) "
                               "ON CONFLICT DO NOTHING", GENESIS)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._lock_conn is not None:
            await self._lock_conn.close()
            self._lock_conn = None

    async def claim(self, instance: int) -> None:
        settings = {"search_path": self.schema} if self.schema else None
        self._lock_conn = await asyncpg.connect(self.dsn, server_settings=settings)
        await self._lock_conn.execute("SELECT pg_advisory_lock($1, $2)", _INSTANCE_LOCKS,
                                      instance)

    async def intend(self, instance: int, intents: list[tuple[str, float, str]]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # An intent only has to outlive midway, not the database server: no WAL flush
            # wait (a record's own commit keeps synchronous_commit).
            await conn.execute("SET LOCAL synchronous_commit = off")
            await conn.executemany("INSERT INTO audit_intents (request_id, instance, ts, data) "
                                   "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                                   [(rid, instance, ts, data) for rid, ts, data in intents])

    async def recover(self, instance: int, build: Callable[[list[str]], list[Row]]) -> int:
        others = [r[0] for r in await self.pool.fetch(
            "SELECT DISTINCT instance FROM audit_intents WHERE instance != $1", instance)]
        recovered = 0
        for other in others:
            async with self.pool.acquire() as conn:
                # Free only when the instance's session (and so the instance) is gone.
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)",
                                           _INSTANCE_LOCKS, other):
                    continue
                try:
                    intents = [r[0] for r in await conn.fetch(
                        "SELECT data FROM audit_intents WHERE instance = $1 "
                        "ORDER BY ts, request_id", other)]
                    rows = build(intents)
                    await self.append(rows, retrying=True)
                    recovered += sum(1 for row in rows if row.seq)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1, $2)", _INSTANCE_LOCKS,
                                       other)
        return recovered

    async def append(self, rows: list[Row], retrying: bool = False) -> Head:
        async with self.pool.acquire() as conn, conn.transaction():
            seq, prev, anchor_seq, anchor_hash = await conn.fetchrow(
                "SELECT seq, head_hash, anchor_seq, anchor_hash FROM audit_chain "
                "WHERE id = 1 FOR UPDATE")
            self._known.check(anchor_seq)
            await conn.execute("DELETE FROM audit_intents WHERE request_id = ANY($1::text[])",
                               [r.request_id for r in rows])
            if retrying:
                stored = {r["request_id"] for r in await conn.fetch(
                    "SELECT request_id FROM audit_records WHERE request_id = ANY($1::text[])",
                    [r.request_id for r in rows])}
                rows = [r for r in rows if r.request_id not in stored]
            values = []
            refs: list[tuple[str, int]] = []
            new_parts: dict[str, str] = {}
            for row in rows:
                seq += 1
                digest = link_hash(prev, seq, row.content)
                row.seq, row.prev_hash, row.hash = seq, prev, digest
                values.append((seq, row.ts, row.request_id, row.upstream_request_id,
                               row.principal, row.model, row.status, row.data, row.request_body,
                               row.response_body, prev, digest))
                prev = digest
                for part, text in row.parts.items():
                    refs.append((part, seq))
                    if part not in self._known:
                        new_parts[part] = text
            if new_parts:
                await conn.executemany("INSERT INTO audit_parts (digest, body) VALUES ($1, $2) "
                                       "ON CONFLICT DO NOTHING", list(new_parts.items()))
            if refs:
                await conn.executemany("INSERT INTO audit_part_refs (digest, seq) VALUES "
                                       "($1, $2) ON CONFLICT DO NOTHING", refs)
            if values:
                await conn.copy_records_to_table(
                    "audit_records", records=values, schema_name=self.schema,
                    columns=["seq", "ts", "request_id", "upstream_request_id", "principal",
                             "model", "status", "data", "request_body", "response_body",
                             "prev_hash", "hash"])
                await conn.execute("UPDATE audit_chain SET seq = $1, head_hash = $2 "
                                   "WHERE id = 1", seq, prev)
        self._known.add(new_parts)
        return Head(seq, prev, anchor_seq, anchor_hash)

    async def prune(self, max_age: float | None, max_rows: int | None) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            head_seq, anchor_seq = await conn.fetchrow(
                "SELECT seq, anchor_seq FROM audit_chain WHERE id = 1 FOR UPDATE")
            cut = anchor_seq
            if max_rows is not None:
                cut = max(cut, head_seq - max_rows)
            if max_age is not None:
                # Prune a prefix of the chain only: up to the first record young enough.
                first_young = await conn.fetchval(
                    "SELECT MIN(seq) FROM audit_records WHERE ts >= $1", time.time() - max_age)
                cut = max(cut, (first_young if first_young is not None else head_seq + 1) - 1)
            if cut <= anchor_seq:
                return 0
            anchor = await conn.fetchval("SELECT hash FROM audit_records WHERE seq = $1", cut)
            if anchor is None:
                return 0
            status = await conn.execute("DELETE FROM audit_records WHERE seq <= $1", cut)
            candidates = [r[0] for r in await conn.fetch(
                "DELETE FROM audit_part_refs WHERE seq <= $1 RETURNING digest", cut)]
            if candidates:
                await conn.execute("DELETE FROM audit_parts WHERE digest = "  # noqa: S608
                                   f"ANY($1::text[]) AND {UNREFERENCED}",
                                   sorted(set(candidates)))
            await conn.execute("UPDATE audit_chain SET anchor_seq = $1, anchor_hash = $2 "
                               "WHERE id = 1", cut, anchor)
        return int(status.split()[-1])

    async def head(self) -> Head:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT seq, head_hash, anchor_seq, anchor_hash FROM audit_chain WHERE id = 1")
            count = await conn.fetchval("SELECT COUNT(*) FROM audit_records")
        return Head(row[0], row[1], row[2], row[3], count)

    async def query(self, filt: Filter, limit: int) -> list[dict[str, Any]]:
        where, args = filt.where(_q, like="ILIKE")
        rows = await self.pool.fetch(
            f"SELECT {SUMMARY_COLUMNS} FROM audit_records{where} "  # noqa: S608
            f"ORDER BY ts DESC, seq DESC LIMIT ${len(args) + 1}", *args, limit)
        return [summary_record(*r) for r in rows]

    async def get(self, request_id: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(f"SELECT {COLUMNS} FROM audit_records "  # noqa: S608
                                       "WHERE request_id = $1 ORDER BY seq LIMIT 1", request_id)
        if row is None:
            return None
        found = [StoredRow(*row)]
        await expand_rows(found, self.parts)
        return full_record(found[0])

    async def parts(self, digests: list[str]) -> dict[str, str]:
        rows = await self.pool.fetch("SELECT digest, body FROM audit_parts "
                                     "WHERE digest = ANY($1::text[])", digests)
        return {r["digest"]: r["body"] for r in rows}

    async def after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(f"SELECT {SUMMARY_COLUMNS} FROM audit_records "  # noqa: S608
                                     "WHERE seq > $1 ORDER BY seq LIMIT $2", seq, limit)
        return [summary_record(*r) for r in rows]

    async def scan(self, after_seq: int, limit: int) -> list[StoredRow]:
        rows = await self.pool.fetch(f"SELECT {COLUMNS} FROM audit_records "  # noqa: S608
                                     "WHERE seq > $1 ORDER BY seq LIMIT $2", after_seq, limit)
        return [StoredRow(*r) for r in rows]

    async def scan_filtered(self, filt: Filter, after_seq: int, limit: int
                            ) -> list[StoredRow]:
        where, args = filt.where(_q, like="ILIKE")
        n = len(args)
        where = f"{where} AND seq > ${n + 1}" if where else f" WHERE seq > ${n + 1}"
        rows = await self.pool.fetch(f"SELECT {COLUMNS} FROM audit_records{where} "  # noqa: S608
                                     f"ORDER BY seq LIMIT ${n + 2}", *args, after_seq, limit)
        found = [StoredRow(*r) for r in rows]
        await expand_rows(found, self.parts)
        return found


def _ident(name: str) -> str:
    """A schema name as a quoted identifier's content (it comes from config, not clients)."""
    return name.replace('"', '""')
