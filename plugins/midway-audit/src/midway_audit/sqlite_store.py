"""The embedded store: SQLite in WAL mode, driven from one thread of its own.

Appends run in ``BEGIN IMMEDIATE`` transactions that read the chain head, insert the batch
and move the head: several processes (``midway serve --workers N``) can share one file and
the chain stays a single, verifiable sequence.

An instance writing intents proves it is alive by holding an exclusive ``flock`` on
``audit-instances/<instance>.lock`` next to the database; the kernel drops the lock when the
process dies (even by ``kill -9``), which is how recovery tells a dead instance's intents
from a live one's.
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

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_records (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
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
    seq INTEGER NOT NULL,
    PRIMARY KEY (digest, seq)
);
CREATE INDEX IF NOT EXISTS audit_part_refs_seq ON audit_part_refs (seq);
CREATE TABLE IF NOT EXISTS audit_intents (
    request_id TEXT PRIMARY KEY,
    instance INTEGER NOT NULL,
    ts REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_intents_instance ON audit_intents (instance);
CREATE TABLE IF NOT EXISTS audit_chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    head_hash TEXT NOT NULL,
    anchor_seq INTEGER NOT NULL,
    anchor_hash TEXT NOT NULL
);
"""


def _q(n: int) -> str:
    return "?"


class SQLiteStore:
    def __init__(self, path: Path, synchronous: str = "full", inline: bool = False) -> None:
        self.path = path
        # inline: calls run on the caller's thread (the writer process has no loop to keep
        # responsive); otherwise on a thread of their own.
        self.inline = inline
        self.synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="midway-audit")
        self._db: sqlite3.Connection | None = None
        self._known = KnownParts()
        self.lock_dir = path.parent / "audit-instances"
        self._lock: IO[bytes] | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.inline:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "store not open"
        return self._db

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=30.0)
        enable_wal(db)
        db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("BEGIN IMMEDIATE")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("INSERT OR IGNORE INTO audit_chain VALUES (1, 0, ?, 0, ?)", (GENESIS, GENESIS))
        db.execute("COMMIT")
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)
        if self._lock is not None:
            os.unlink(self._lock.name)
            self._lock.close()
            self._lock = None

    async def claim(self, instance: int) -> None:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.lock_dir / f"{instance}.lock", "wb")  # noqa: SIM115, ASYNC230
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock = lock

    # -- writing -----------------------------------------------------------------------------

    async def append(self, rows: list[Row], retrying: bool = False) -> Head:
        return await self._run(self._append, rows, retrying)

    def _append(self, rows: list[Row], retrying: bool) -> Head:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM audit_intents WHERE request_id = ?",
                           [(r.request_id,) for r in rows])
            if retrying:
                rows = [r for r in rows if db.execute(
                    "SELECT 1 FROM audit_records WHERE request_id = ? LIMIT 1",
                    (r.request_id,)).fetchone() is None]
            seq, prev, anchor_seq, anchor_hash = db.execute(
                "SELECT seq, head_hash, anchor_seq, anchor_hash FROM audit_chain WHERE id = 1"
            ).fetchone()
            self._known.check(anchor_seq)
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
            db.executemany("INSERT OR IGNORE INTO audit_parts (digest, body) VALUES (?, ?)",
                           new_parts.items())
            db.executemany("INSERT OR IGNORE INTO audit_part_refs (digest, seq) VALUES (?, ?)",
                           refs)
            db.executemany("INSERT INTO audit_records (seq, ts, request_id, "
                           "upstream_request_id, principal, model, status, data, request_body, "
                           "response_body, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                           values)
            db.execute("UPDATE audit_chain SET seq = ?, head_hash = ? WHERE id = 1",
                       (seq, prev))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._known.add(new_parts)
        return Head(seq, prev, anchor_seq, anchor_hash)

    async def intend(self, instance: int, intents: list[tuple[str, float, str]]) -> None:
        await self._run(self._intend, instance, intents)

    def _intend(self, instance: int, intents: list[tuple[str, float, str]]) -> None:
        db = self.db
        # An intent only has to survive the process (kill -9), not the machine: in WAL mode
        # a commit without fsync does, and the next full-sync commit syncs it along.
        relaxed = self.synchronous != "normal"
        if relaxed:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR IGNORE INTO audit_intents (request_id, instance, ts, "
                               "data) VALUES (?, ?, ?, ?)",
                               [(rid, instance, ts, data) for rid, ts, data in intents])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            if relaxed:
                db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")

    def _dead(self, instance: int) -> IO[bytes] | None:
        """A locked handle on a dead instance's lock file, or None while it lives."""
        try:
            handle = open(self.lock_dir / f"{instance}.lock", "ab")  # noqa: SIM115
        except OSError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    async def recover(self, instance: int, build: Callable[[list[str]], list[Row]]) -> int:
        others = [r[0] for r in await self._run(
            self._fetch, "SELECT DISTINCT instance FROM audit_intents WHERE instance != ?",
            [instance])]
        recovered = 0
        for other in others:
            path = self.lock_dir / f"{other}.lock"
            # No lock file: the instance closed (it only removes it then) or never claimed.
            handle = self._dead(other) if path.exists() else None
            if path.exists() and handle is None:
                continue  # alive
            try:
                intents = [r[0] for r in await self._run(
                    self._fetch, "SELECT data FROM audit_intents WHERE instance = ? "
                    "ORDER BY ts, request_id", [other])]
                rows = build(intents)
                await self.append(rows, retrying=True)
                recovered += sum(1 for row in rows if row.seq)
            finally:
                if handle is not None:
                    path.unlink(missing_ok=True)
                    handle.close()
        return recovered

    async def prune(self, max_age: float | None, max_rows: int | None) -> int:
        return await self._run(self._prune, max_age, max_rows)

    def _prune(self, max_age: float | None, max_rows: int | None) -> int:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            head_seq, anchor_seq = db.execute(
                "SELECT seq, anchor_seq FROM audit_chain WHERE id = 1").fetchone()
            cut = anchor_seq
            if max_rows is not None:
                cut = max(cut, head_seq - max_rows)
            if max_age is not None:
                # Prune a prefix of the chain only: up to the first record young enough.
                first_young = db.execute("SELECT MIN(seq) FROM audit_records WHERE ts >= ?",
                                         (time.time() - max_age,)).fetchone()[0]
                cut = max(cut, (first_young if first_young is not None else head_seq + 1) - 1)
            if cut <= anchor_seq:
                db.execute("COMMIT")
                return 0
            found = db.execute("SELECT hash FROM audit_records WHERE seq = ?",
                               (cut,)).fetchone()
            if found is None:
                db.execute("COMMIT")
                return 0
            deleted = db.execute("DELETE FROM audit_records WHERE seq <= ?", (cut,)).rowcount
            candidates = [r[0] for r in db.execute(
                "SELECT DISTINCT digest FROM audit_part_refs WHERE seq <= ?", (cut,))]
            db.execute("DELETE FROM audit_part_refs WHERE seq <= ?", (cut,))
            for i in range(0, len(candidates), 500):
                chunk = candidates[i:i + 500]
                marks = ",".join("?" * len(chunk))
                db.execute(f"DELETE FROM audit_parts WHERE digest IN ({marks}) "  # noqa: S608
                           f"AND {UNREFERENCED}", chunk)
            db.execute("UPDATE audit_chain SET anchor_seq = ?, anchor_hash = ? WHERE id = 1",
                       (cut, found[0]))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(deleted)

    # -- reading -----------------------------------------------------------------------------

    async def head(self) -> Head:
        return await self._run(self._head)

    def _head(self) -> Head:
        seq, head_hash, anchor_seq, anchor_hash = self.db.execute(
            "SELECT seq, head_hash, anchor_seq, anchor_hash FROM audit_chain WHERE id = 1"
        ).fetchone()
        count = self.db.execute("SELECT COUNT(*) FROM audit_records").fetchone()[0]
        return Head(seq, head_hash, anchor_seq, anchor_hash, count)

    async def query(self, filt: Filter, limit: int) -> list[dict[str, Any]]:
        where, args = filt.where(_q)
        sql = (f"SELECT {SUMMARY_COLUMNS} FROM audit_records{where} "  # noqa: S608
               "ORDER BY ts DESC, seq DESC LIMIT ?")
        rows = await self._run(self._fetch, sql, [*args, limit])
        return [summary_record(*r) for r in rows]

    async def get(self, request_id: str) -> dict[str, Any] | None:
        rows = await self._run(self._fetch, f"SELECT {COLUMNS} FROM audit_records "  # noqa: S608
                               "WHERE request_id = ? ORDER BY seq LIMIT 1", [request_id])
        if not rows:
            return None
        found = [StoredRow(*rows[0])]
        await expand_rows(found, self.parts)
        return full_record(found[0])

    async def parts(self, digests: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(digests), 500):
            chunk = digests[i:i + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT digest, body FROM audit_parts WHERE digest IN ({marks})"  # noqa: S608
            found.update(await self._run(self._fetch, sql, chunk))
        return found

    async def after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        rows = await self._run(self._fetch, f"SELECT {SUMMARY_COLUMNS} FROM audit_records "  # noqa: S608
                               "WHERE seq > ? ORDER BY seq LIMIT ?", [seq, limit])
        return [summary_record(*r) for r in rows]

    async def scan(self, after_seq: int, limit: int) -> list[StoredRow]:
        rows = await self._run(self._fetch, f"SELECT {COLUMNS} FROM audit_records "  # noqa: S608
                               "WHERE seq > ? ORDER BY seq LIMIT ?", [after_seq, limit])
        return [StoredRow(*r) for r in rows]

    async def scan_filtered(self, filt: Filter, after_seq: int, limit: int
                            ) -> list[StoredRow]:
        where, args = filt.where(_q)
        where = f"{where} AND seq > ?" if where else " WHERE seq > ?"
        rows = await self._run(self._fetch, f"SELECT {COLUMNS} FROM audit_records{where} "  # noqa: S608
                               "ORDER BY seq LIMIT ?", [*args, after_seq, limit])
        found = [StoredRow(*r) for r in rows]
        await expand_rows(found, self.parts)
        return found

    def _fetch(self, sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, args).fetchall()
