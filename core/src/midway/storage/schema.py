"""Schemas: create and migrate a store's tables, and check a configured store from the outside
(``midway config check`` / ``midway db upgrade``).

A migration is additive: a column added to a :class:`~midway.storage.database.Schema`'s DDL is
added to existing tables when the store opens or ``midway db upgrade`` runs. Problems are
sentences naming the store (password masked) and what to do, so every plugin reports alike.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midway.storage.retry import StoreUnavailable, is_transient, reach
from midway.storage.url import StoreURL, StoreURLError, mask

if TYPE_CHECKING:
    from midway.storage.database import PostgresDatabase, Schema, Tx

log = logging.getLogger("midway.storage")

UPGRADE_HINT = "run `midway db upgrade`"
CONNECT_TIMEOUT = 5.0  # seconds; a check must not hang on a black-holed address
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_identifier(name: str, label: str) -> str:
    """``name`` if it is a plain SQL identifier (it is formatted into DDL), else an error."""
    if not _IDENTIFIER.fullmatch(name):
        raise StoreURLError(f"{label} must be a plain SQL identifier, not {name!r}")
    return name


def column_definitions(ddl: str | Iterable[str]) -> dict[str, dict[str, str]]:
    """Table → column → its definition (``TYPE [NOT NULL] [DEFAULT x]``) in a schema script,
    read by running it on an in-memory SQLite database, which keeps declared types verbatim."""
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


def _split(statements: list[str]) -> tuple[list[str], list[str]]:
    """CREATE TABLE statements, and the rest (indexes may name columns added by migration),
    without an index the script drops further on (a replaced one: it would be built at every
    start only to be dropped again)."""
    tables = [s for s in statements if s.upper().startswith("CREATE TABLE")]
    kept: list[str] = []
    dropped_later: set[str] = set()
    for statement in reversed([s for s in statements if s not in tables]):
        if (created := _CREATE_INDEX.match(statement)) and created[1] in dropped_later:
            continue
        if dropped := _DROP_INDEX.match(statement):
            dropped_later.add(dropped[1])
        kept.append(statement)
    return tables, kept[::-1]


def _changes(before: Mapping[str, set[str]], after: Mapping[str, set[str]],
             tables: Iterable[str], where: str) -> list[str]:
    done = []
    for table in sorted(tables):
        if table not in before and table in after:
            done.append(f"{where}: created table {table}")
        elif table in before:
            added = sorted(after.get(table, set()) - before[table])
            if added:
                done.append(f"{where}: added column(s) {', '.join(added)} to {table}")
    return done


# -- SQLite ----------------------------------------------------------------------------------

async def _sqlite_tables(tx: Tx) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for row in await tx.fetch("SELECT name FROM sqlite_master WHERE type = 'table'"):
        found[row["name"]] = {c["name"] for c in await tx.fetch(
            f'PRAGMA table_info("{row["name"]}")')}
    return found


async def sqlite_upgrade(tx: Tx, schema: Schema, where: str = "") -> list[str]:
    """Create ``schema``'s tables and add missing columns, inside ``tx``; what changed."""
    wanted = schema.tables()
    before = await _sqlite_tables(tx)
    create_tables, rest = _split(schema.statements("sqlite"))
    for statement in create_tables:
        await tx.execute(statement)
    for table, columns in wanted.items():
        for column, definition in columns.items():
            if table in before and column not in before[table]:
                # identifiers come from the plugin's own DDL, not from config or clients
                await tx.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {definition}')
    for statement in rest:
        await tx.execute(statement)
    return _changes(before, await _sqlite_tables(tx), wanted, where or "SQLite")


# -- PostgreSQL ------------------------------------------------------------------------------

async def _pg_tables(conn: Any, schema: str | None) -> dict[str, set[str]] | None:
    name = schema or await conn.fetchval("SELECT current_schema()")
    if name is None or not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", name):
        return None
    found: dict[str, set[str]] = {}
    for row in await conn.fetch("SELECT table_name, column_name FROM "
                                "information_schema.columns WHERE table_schema = $1", name):
        found.setdefault(row[0], set()).add(row[1])
    return found


async def pg_upgrade(db: PostgresDatabase, schema: Schema) -> list[str]:
    """Create ``schema``'s tables (and the PostgreSQL schema) and add missing columns; what
    changed. Instances starting together take turns (an advisory lock per store name).

    A new index on a table that already exists is built ``CONCURRENTLY`` once the transaction
    has committed, and an index the script drops is dropped so too: a plain ``CREATE INDEX``
    holds off every write to the table while it reads it all — minutes on a large ledger,
    during which the instances still serving would refuse requests. An index a failed
    concurrent build left invalid is dropped and built again."""
    wanted = schema.tables()
    create_tables, rest = _split(schema.statements("postgresql"))
    conn = await db.connect()
    try:
        # A session lock (closing the connection releases it): it covers the online builds too.
        await _take_lock(conn, f"midway schema {schema.name}")
        async with conn.transaction():
            if db.schema:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"')
            before = await _pg_tables(conn, db.schema) or {}
            name = db.schema or await conn.fetchval("SELECT current_schema()")
            indexes = await _pg_indexes(conn, name)
            for statement in create_tables:
                await conn.execute(statement)
            for table, columns in wanted.items():
                for column, definition in columns.items():
                    if table in before and column not in before[table]:
                        await conn.execute(f'ALTER TABLE "{name}"."{table}" ADD COLUMN IF NOT '
                                           f'EXISTS "{column}" {definition}')
            online = []
            for statement in rest:
                if (created := _CREATE_INDEX.match(statement)) and indexes.get(created[1]):
                    continue  # there already: IF NOT EXISTS would still lock the table first
                if _online(statement, before, indexes):
                    online.append(statement)
                else:
                    await conn.execute(statement)
            after = await _pg_tables(conn, db.schema) or {}
        where = f"PostgreSQL {db.store.masked}"
        built = []
        for statement in online:
            built.append(await _build_online(conn, name, statement, indexes, where))
    finally:
        await conn.close()
    return _changes(before, after, wanted, where) + built


async def _take_lock(conn: Any, name: str) -> None:
    """The advisory lock ``name``, asked for again and again rather than waited for in one
    statement: a statement waiting holds a snapshot, and the holder's ``CREATE INDEX
    CONCURRENTLY`` waits for every older snapshot to go — a deadlock PostgreSQL breaks by
    failing one of the two."""
    delay = 0.02
    while not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", name):
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


_CREATE_INDEX = re.compile(r"CREATE\s+INDEX\s+IF\s+NOT\s+EXISTS\s+(\w+)\s+ON\s+(\w+)", re.I)
_DROP_INDEX = re.compile(r"DROP\s+INDEX\s+IF\s+EXISTS\s+(\w+)\s*$", re.I)


async def _pg_indexes(conn: Any, schema: str) -> dict[str, bool]:
    """The indexes in ``schema``: name → whether it is valid (a failed concurrent build leaves
    an invalid one)."""
    return {row[0]: row[1] for row in await conn.fetch(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = "
        "i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
        schema)}


def _online(statement: str, before: Mapping[str, set[str]], indexes: Mapping[str, bool]
            ) -> bool:
    """Whether ``statement`` is built or dropped after the transaction, concurrently: a new
    (or invalid) index on a table that existed, or an existing index to drop (after the new
    ones, which often replace it)."""
    if created := _CREATE_INDEX.match(statement):
        return created[2] in before and not indexes.get(created[1], False)
    if dropped := _DROP_INDEX.match(statement):
        return dropped[1] in indexes
    return False


async def _build_online(conn: Any, schema: str, statement: str, indexes: Mapping[str, bool],
                        where: str) -> str:
    if dropped := _DROP_INDEX.match(statement):
        await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{schema}"."{dropped[1]}"')
        return f"{where}: dropped index {dropped[1]}"
    created = _CREATE_INDEX.match(statement)
    assert created is not None
    index, table = created[1], created[2]
    if index in indexes:  # invalid: what a concurrent build that failed leaves behind
        await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{schema}"."{index}"')
    log.info("%s: building index %s on %s; writes go on meanwhile (it can take a while on a "
             "large table)", where, index, table)
    await conn.execute(re.sub(r"^CREATE\s+INDEX", "CREATE INDEX CONCURRENTLY", statement,
                              flags=re.I))
    return f"{where}: built index {index} on {table}"


def pg_error(where: str, exc: BaseException) -> str:
    import asyncpg

    if isinstance(exc, asyncpg.InvalidPasswordError
                  | asyncpg.InvalidAuthorizationSpecificationError):
        return f"{where}: authentication failed ({exc})"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{where}: database does not exist ({exc})"
    if isinstance(exc, OSError | TimeoutError):
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            type(exc).__name__
        return f"{where}: unreachable ({detail})"
    return f"{where}: {exc}"


# -- checks and upgrades from the outside ----------------------------------------------------

async def check_store(store: StoreURL, schema: Schema, *, label: str,
                      pg_schema: str | None = None) -> list[str]:
    """Problems with a configured store: unreachable, credentials refused, tables missing or
    older than this version (PostgreSQL), a file that cannot be written or is not a database
    (SQLite: its tables are created when it opens). Empty when all is well."""
    if store.kind == "sqlite":
        assert store.path is not None
        return check_sqlite(label, store.path)
    if store.kind == "redis":
        return await check_redis(label, store.url or "")
    where = f"{label}: PostgreSQL {store.masked}"
    try:
        import asyncpg
    except ImportError:
        return [f"{label}: a PostgreSQL store needs asyncpg: pip install 'midway[postgres]'"]
    if pg_schema:
        try:
            check_identifier(pg_schema, f"{label}: schema")
        except StoreURLError as exc:
            return [str(exc)]
    try:
        conn = await asyncpg.connect(store.url, timeout=CONNECT_TIMEOUT)
        try:
            found = await _pg_tables(conn, pg_schema)
        finally:
            await conn.close()
    except Exception as exc:
        return [pg_error(where, exc)]
    if found is None:
        return [f"{where}: schema {pg_schema!r} does not exist; {UPGRADE_HINT}"]
    tables = {t: set(c) for t, c in schema.tables().items()}
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


async def upgrade_store(store: StoreURL, schema: Schema, *, label: str,
                        pg_schema: str | None = None) -> list[str]:
    """Create or migrate a configured store's tables; one line per change."""
    from midway.storage.database import open_database

    db = open_database(store, schema=pg_schema, label=label)
    try:
        return await db.open(schema)
    finally:
        await db.close()


async def check_redis(label: str, url: str) -> list[str]:
    """Reachable and credentials accepted (``PING`` answered)."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return [f"{label}: a Redis store needs the redis package: pip install redis"]
    where = f"{label}: Redis {mask(url)}"
    client = aioredis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT,
                               socket_timeout=CONNECT_TIMEOUT)
    try:
        await client.ping()
    except Exception as exc:
        return [redis_error(where, exc)]
    finally:
        await client.aclose()
    return []


def redis_error(where: str, exc: BaseException) -> str:
    """One line for a Redis that did not answer ``PING``: refused credentials, unreachable."""
    text = str(exc)
    names = {c.__name__ for c in type(exc).__mro__}
    if "AuthenticationError" in names or "NOAUTH" in text or "WRONGPASS" in text:
        return f"{where}: authentication failed ({text})"
    if is_transient(exc):
        return f"{where}: unreachable ({text})"
    return f"{where}: {text}"


async def ping_redis(client: Any, where: str, *, log: logging.Logger) -> None:
    """Start-up's ``PING`` of a plugin's Redis: waited for while unreachable (up to
    ``store_wait``, :func:`~midway.storage.retry.reach`); any other refusal (credentials) is
    :class:`~midway.storage.retry.StoreUnavailable`, one line naming ``where``."""
    try:
        await reach(client.ping, where=where, log=log)
    except Exception as exc:  # reach's own StoreUnavailable is not redis's: it goes through
        if type(exc).__module__.startswith("redis"):
            raise StoreUnavailable(redis_error(where, exc)) from None
        raise


def check_sqlite(label: str, path: Path) -> list[str]:
    """The file can be created or written, and is an SQLite database if it exists."""
    where = f"{label}: SQLite {path}"
    directory = path.parent
    if path.exists():
        if not os.access(path, os.W_OK):
            return [f"{where}: the file is not writable"]
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                db.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            return [f"{where}: not a usable SQLite database ({exc})"]
        return []
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK):
        return [f"{where}: the directory {existing} is not writable"]
    return []
