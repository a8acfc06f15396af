"""The embedded store: one SQLite file (WAL) in the data dir, no server needed.

All SQLite work runs on one dedicated thread, so the event loop never waits on the disk.
Fill locks are per process (the in-process coalescer already makes one request fill a key);
several workers sharing the file may each fill the same key once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from midway.sqlite_wal import enable_wal
from midway_cache.stores.base import COUNTERS, Candidate, Entry, empty_stats

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    partition TEXT,
    created_at REAL NOT NULL,
    expires_at REAL,
    last_access REAL NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL,
    prompt TEXT,
    vector BLOB,
    tool_use INTEGER NOT NULL DEFAULT 0,
    cost_usd TEXT
);
CREATE INDEX IF NOT EXISTS entries_partition ON entries (partition) WHERE partition IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_lru ON entries (last_access);
CREATE INDEX IF NOT EXISTS entries_tenant ON entries (tenant);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""

_COLUMNS = "key, tenant, partition, created_at, expires_at, body, prompt, vector, cost_usd"


class SQLiteStore:
    def __init__(self, path: Path, max_bytes: int, max_entries: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._db: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="midway-cache-db")
        self._locks: set[str] = set()
        self._count = 0
        self._bytes = 0

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            assert self._db is not None
            with self._db:  # one transaction per call
                return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            enable_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            db.isolation_level = "DEFERRED"
            self._recount(db)
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        if self._db is not None:
            db = self._db
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    async def get(self, key: str, now: float) -> Entry | None:
        def read(db: sqlite3.Connection) -> Entry | None:
            row = db.execute(f"SELECT {_COLUMNS} FROM entries WHERE key = ? AND "  # noqa: S608
                             "(expires_at IS NULL OR expires_at > ?)", (key, now)).fetchone()
            return _entry(row) if row else None

        return await self._run(read)

    async def put(self, entry: Entry) -> None:
        def write(db: sqlite3.Connection) -> None:
            old = db.execute("SELECT size FROM entries WHERE key = ?", (entry.key,)).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO entries (key, tenant, partition, created_at, expires_at,"
                " last_access, size, body, prompt, vector, tool_use, cost_usd) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry.key, entry.tenant, entry.partition, entry.created_at, entry.expires_at,
                 entry.created_at, entry.size, entry.body, entry.prompt, entry.vector,
                 int(entry.tool_use), entry.cost_usd))
            if old:
                self._bytes -= old[0]
            else:
                self._count += 1
            self._bytes += entry.size
            self._evict(db)

        await self._run(write)

    def _evict(self, db: sqlite3.Connection) -> None:
        # Running totals keep a put from scanning the table; ``purge`` recounts them.
        while (self.max_bytes and self._bytes > self.max_bytes) or \
                (self.max_entries and self._count > self.max_entries):
            over = max(1, self._count - self.max_entries if self.max_entries else 0,
                       self._count // 20 if self._bytes > self.max_bytes else 0)
            rows = db.execute("SELECT key, size FROM entries ORDER BY last_access LIMIT ?",
                              (over,)).fetchall()
            if not rows:
                break
            db.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k, _ in rows])
            self._count -= len(rows)
            self._bytes -= sum(s for _, s in rows)

    def _recount(self, db: sqlite3.Connection) -> None:
        self._count, self._bytes = db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM entries").fetchone()

    async def candidates(self, partition: str, now: float) -> list[Candidate]:
        def read(db: sqlite3.Connection) -> list[Candidate]:
            rows = db.execute(
                "SELECT key, prompt, tool_use, vector FROM entries WHERE partition = ? AND "
                "vector IS NOT NULL AND (expires_at IS NULL OR expires_at > ?)",
                (partition, now)).fetchall()
            return [Candidate(key=k, prompt=p or "", tool_use=bool(t), vector=v)
                    for k, p, t, v in rows]

        return await self._run(read)

    async def record(self, touched: dict[str, float], counters: dict[str, float]) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE entries SET last_access = ? WHERE key = ?",
                           [(t, k) for k, t in touched.items()])
            db.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                list(counters.items()))

        await self._run(write)

    async def stats(self) -> dict[str, Any]:
        def read(db: sqlite3.Connection) -> dict[str, Any]:
            stats = empty_stats()
            count, size = db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM entries").fetchone()
            stats["entries"], stats["bytes"] = count, size
            for name, value in db.execute("SELECT name, value FROM counters"):
                if name in COUNTERS:
                    stats[name] = value if name == "saved_usd" else int(value)
            return stats

        return await self._run(read)

    async def clear(self, tenant: str | None = None) -> int:
        def write(db: sqlite3.Connection) -> int:
            if tenant is None:
                deleted = db.execute("DELETE FROM entries").rowcount
            else:
                deleted = db.execute("DELETE FROM entries WHERE tenant = ?", (tenant,)).rowcount
            self._recount(db)
            return int(deleted)

        return await self._run(write)

    async def purge(self, now: float) -> int:
        def write(db: sqlite3.Connection) -> int:
            deleted = db.execute("DELETE FROM entries WHERE expires_at IS NOT NULL AND "
                                 "expires_at <= ?", (now,)).rowcount
            self._recount(db)
            return int(deleted)

        return await self._run(write)

    async def lock(self, key: str, ttl: float) -> bool:
        if key in self._locks:
            return False
        self._locks.add(key)
        return True

    async def locked(self, key: str) -> bool:
        return key in self._locks

    async def unlock(self, key: str) -> None:
        self._locks.discard(key)


def _entry(row: tuple[Any, ...]) -> Entry:
    key, tenant, partition, created_at, expires_at, body, prompt, vector, cost = row
    return Entry.from_body(bytes(body), key=key, tenant=tenant, partition=partition,
                           created_at=created_at, expires_at=expires_at, prompt=prompt,
                           vector=vector, cost_usd=cost)
