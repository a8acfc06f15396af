"""Two small database adapters with one interface: SQLite (embedded) and PostgreSQL (shared).

SQL is written once with ``?`` placeholders; the PostgreSQL adapter numbers them. SQLite runs
on one dedicated thread so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from midway.sqlite_wal import enable_wal

Row = dict[str, Any]


class Tx(Protocol):
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def execute(self, sql: str, *args: Any) -> None: ...


class Database(Protocol):
    dialect: str

    async def open(self, ddl: Sequence[str]) -> None: ...
    async def close(self) -> None: ...
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    def transaction(self) -> Any: ...  # async context manager yielding a Tx


class SQLiteDatabase:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="midway-keys-db")
        self._conn: sqlite3.Connection | None = None
        self._lock: asyncio.Lock | None = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=30)
        conn.row_factory = sqlite3.Row
        enable_wal(conn)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    async def open(self, ddl: Sequence[str]) -> None:
        self._lock = asyncio.Lock()
        self._conn = await self._run(self._connect)
        async with self.transaction() as tx:
            for statement in ddl:
                await tx.execute(statement)

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=False)

    def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[Row]:
        assert self._conn is not None, "database is not open"
        return [dict(row) for row in self._conn.execute(sql, args).fetchall()]

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        assert self._lock is not None, "database is not open"
        async with self._lock:
            rows: list[Row] = await self._run(self._fetch, sql, args)
            return rows

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        assert self._lock is not None, "database is not open"
        async with self._lock:
            await self._run(self._fetch, "BEGIN IMMEDIATE", ())
            try:
                yield _SQLiteTx(self)
            except BaseException:
                await self._run(self._fetch, "ROLLBACK", ())
                raise
            await self._run(self._fetch, "COMMIT", ())


class _SQLiteTx:
    def __init__(self, db: SQLiteDatabase) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        rows: list[Row] = await self._db._run(self._db._fetch, sql, args)
        return rows

    async def execute(self, sql: str, *args: Any) -> None:
        await self._db._run(self._db._fetch, sql, args)


_PLACEHOLDER = re.compile(r"\?")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, dsn: str, schema: str | None = None) -> None:
        if schema is not None and not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"[keys] schema must be a plain SQL identifier, not {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self._pool: Any = None

    async def open(self, ddl: Sequence[str]) -> None:
        try:
            import asyncpg
        except ImportError:
            raise RuntimeError("a PostgreSQL key store needs asyncpg: "
                               "pip install 'midway[postgres]'") from None
        settings = {"search_path": self.schema} if self.schema else None
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4,
                                               server_settings=settings)
        async with self.transaction() as tx:
            # Instances starting together must not race on CREATE ... IF NOT EXISTS.
            await tx.execute("SELECT pg_advisory_xact_lock(hashtext('midway_keys'))")
            if self.schema:
                await tx.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            for statement in ddl:
                await tx.execute(statement)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        assert self._pool is not None, "database is not open"
        return [dict(r) for r in await self._pool.fetch(_numbered(sql), *args)]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        assert self._pool is not None, "database is not open"
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PostgresTx(conn)


class _PostgresTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self._conn.fetch(_numbered(sql), *args)]

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(_numbered(sql), *args)
