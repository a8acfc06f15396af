"""Probes for ``midway config check`` and ``midway db upgrade``: can a store named in the
config be reached, does it accept our credentials, and does it hold the tables the code needs.

Each probe returns problems as sentences naming the store (passwords masked) and what is
wrong, so that every plugin reports alike. Drivers (asyncpg, redis) are imported only when a
store of their kind is named, as the plugins themselves do.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

UPGRADE_HINT = "run `midway db upgrade`"
CONNECT_TIMEOUT = 5.0  # seconds; a check must not hang on a black-holed address
_PASSWORD = re.compile(r"//([^:/@]*):[^@/]*@")


def mask(url: str) -> str:
    """A store URL without its password, fit for messages and logs."""
    return _PASSWORD.sub(r"//\1:***@", url)


def column_definitions(ddl: str | Iterable[str]) -> dict[str, dict[str, str]]:
    """Table → column → its definition (``TYPE [NOT NULL] [DEFAULT x]``) in a schema script,
    read by running it on an in-memory SQLite database, which keeps declared types verbatim.
    Works for the plain DDL the stores write for PostgreSQL, so checks and upgrades follow the
    code when a column is added."""
    script = ddl if isinstance(ddl, str) else ";\n".join(ddl)
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(script)
        tables = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        found: dict[str, dict[str, str]] = {}
        for table in tables:
            columns = found[table] = {}
            for _, name, kind, notnull, default, _pk in db.execute(
                    f'PRAGMA table_info("{table}")'):
                definition = kind or "TEXT"
                if default is not None:
                    # NOT NULL only with a default: existing rows need a value.
                    definition += (" NOT NULL" if notnull else "") + f" DEFAULT {default}"
                columns[name] = definition
        return found
    finally:
        db.close()


def expected_columns(ddl: str | Iterable[str]) -> dict[str, set[str]]:
    """The tables and their columns a schema script creates."""
    return {table: set(columns) for table, columns in column_definitions(ddl).items()}


# -- PostgreSQL ------------------------------------------------------------------------------

async def _pg_connect(dsn: str) -> Any:
    import asyncpg

    return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)


def _pg_error(label: str, dsn: str, exc: BaseException) -> str:
    import asyncpg

    where = f"{label}: PostgreSQL {mask(dsn)}"
    if isinstance(exc, asyncpg.InvalidPasswordError
                  | asyncpg.InvalidAuthorizationSpecificationError):
        return f"{where}: authentication failed ({exc})"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{where}: database does not exist ({exc})"
    if isinstance(exc, OSError | TimeoutError):
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            type(exc).__name__
        return f"{where}: unreachable ({detail})"
    return f"{where}: {type(exc).__name__}: {exc}"


async def pg_tables(dsn: str, schema: str | None) -> dict[str, set[str]] | None:
    """Tables and columns of ``schema`` (or the connection's current schema); ``None`` when the
    schema does not exist. Raises what the connection raises."""
    conn = await _pg_connect(dsn)
    try:
        name = schema or await conn.fetchval("SELECT current_schema()")
        if name is None or not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", name):
            return None
        found: dict[str, set[str]] = {}
        for row in await conn.fetch("SELECT table_name, column_name FROM "
                                    "information_schema.columns WHERE table_schema = $1", name):
            found.setdefault(row[0], set()).add(row[1])
        return found
    finally:
        await conn.close()


async def add_missing_columns(dsn: str, schema: str | None, ddl: str | Iterable[str]) -> None:
    """Migrate tables made by an older version: add the columns the DDL has and they lack
    (``CREATE TABLE IF NOT EXISTS`` leaves an existing table as it is)."""
    found = await pg_tables(dsn, schema) or {}
    conn = await _pg_connect(dsn)
    try:
        name = schema or await conn.fetchval("SELECT current_schema()")
        for table, columns in column_definitions(ddl).items():
            for column, definition in columns.items():
                if table in found and column not in found[table]:
                    # identifiers come from the plugin's own DDL, not from config or clients
                    await conn.execute(f'ALTER TABLE "{name}"."{table}" ADD COLUMN IF NOT '
                                       f'EXISTS "{column}" {definition}')
    finally:
        await conn.close()


async def check_postgres(label: str, dsn: str, schema: str | None,
                         tables: Mapping[str, set[str]]) -> list[str]:
    """Reachable, credentials accepted, ``schema`` present with every table and column."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return [f"{label}: a PostgreSQL store needs asyncpg: pip install asyncpg"]
    try:
        found = await pg_tables(dsn, schema)
    except Exception as exc:
        return [_pg_error(label, dsn, exc)]
    where = f"{label}: PostgreSQL {mask(dsn)}"
    if found is None:
        return [f"{where}: schema {schema!r} does not exist; {UPGRADE_HINT}"]
    return schema_problems(where, found, tables)


def schema_problems(where: str, found: Mapping[str, set[str]],
                    tables: Mapping[str, set[str]]) -> list[str]:
    """Missing tables, and tables lacking columns (an older schema)."""
    problems = []
    missing = sorted(t for t in tables if t not in found)
    if missing:
        problems.append(f"{where}: table(s) {', '.join(missing)} missing; {UPGRADE_HINT}")
    for table, columns in sorted(tables.items()):
        lacking = sorted(columns - found.get(table, columns))
        if lacking:
            problems.append(f"{where}: table {table} is older than this version (no column "
                            f"{', '.join(lacking)}); {UPGRADE_HINT}")
    return problems


def created(before: Mapping[str, set[str]] | None, after: Mapping[str, set[str]] | None,
            tables: Iterable[str], where: str) -> list[str]:
    """What an upgrade changed, from the tables before and after it: one line per change."""
    before = before or {}
    after = after or {}
    done = []
    for table in sorted(tables):
        if table not in before and table in after:
            done.append(f"{where}: created table {table}")
        elif table in before:
            added = sorted(after.get(table, set()) - before[table])
            if added:
                done.append(f"{where}: added column(s) {', '.join(added)} to {table}")
    return done


# -- Redis -----------------------------------------------------------------------------------

async def check_redis(label: str, url: str) -> list[str]:
    """Reachable and credentials accepted (``PING`` answered)."""
    try:
        import redis.asyncio as aioredis
        from redis import exceptions
    except ImportError:
        return [f"{label}: a Redis store needs the redis package: pip install redis"]
    where = f"{label}: Redis {mask(url)}"
    client = aioredis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT,
                               socket_timeout=CONNECT_TIMEOUT)
    try:
        await client.ping()
    except exceptions.AuthenticationError as exc:
        return [f"{where}: authentication failed ({exc})"]
    except exceptions.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            return [f"{where}: authentication failed ({exc})"]
        return [f"{where}: {exc}"]
    except (exceptions.ConnectionError, exceptions.TimeoutError, OSError) as exc:
        return [f"{where}: unreachable ({exc})"]
    finally:
        await client.aclose()
    return []


# -- SQLite ----------------------------------------------------------------------------------

def check_sqlite(label: str, path: Path) -> list[str]:
    """The file can be created or written, and is an SQLite database if it exists. Tables are
    not required: embedded stores create them when they open."""
    where = f"{label}: SQLite {path}"
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [f"{where}: cannot create {directory} ({exc.strerror})"]
    if path.exists():
        if not _writable(path):
            return [f"{where}: the file is not writable"]
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                db.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            return [f"{where}: not a usable SQLite database ({exc})"]
    elif not _writable(directory):
        return [f"{where}: the directory {directory} is not writable"]
    return []


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)
