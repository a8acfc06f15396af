"""``midway config check`` and ``midway db upgrade`` for the key store (``[keys]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midway.config import Settings
from midway.keys.db import PostgresDatabase
from midway.keys.store import _ddl, open_store
from midway.secrets_ref import resolve
from midway.storecheck import (
    add_missing_columns,
    check_postgres,
    check_sqlite,
    created,
    expected_columns,
    mask,
    pg_tables,
)

LABEL = "[keys] store"


def enabled(settings: Settings) -> bool:
    return bool(settings.plugin_config("keys").get("enabled"))


def _target(config: dict[str, Any], data_dir: Path) -> tuple[str | None, str | None, Path]:
    """(PostgreSQL DSN, schema, SQLite path): the store ``open_store`` would open."""
    ref = config.get("store")
    target = resolve(str(ref)) if ref else ""
    schema = str(config["schema"]) if config.get("schema") else None
    if target.startswith(("postgresql://", "postgres://")):
        return target, schema, data_dir / "keys.db"
    path = Path(target.removeprefix("sqlite://")).expanduser() if target else \
        data_dir / "keys.db"
    return None, None, path


async def check(settings: Settings) -> list[str]:
    config = settings.plugin_config("keys")
    dsn, schema, path = _target(config, settings.data_dir)
    if dsn is None:
        return check_sqlite(LABEL, path)
    if schema is not None:
        PostgresDatabase(dsn, schema)  # refuses a schema name that is not an identifier
    return await check_postgres(LABEL, dsn, schema, expected_columns(_ddl("postgresql")))


async def upgrade(settings: Settings) -> list[str]:
    """The store creates its schema and tables when it opens, idempotently; columns a newer
    version added are then added to older tables."""
    config = settings.plugin_config("keys")
    dsn, schema, path = _target(config, settings.data_dir)
    before = await pg_tables(dsn, schema) if dsn is not None else None
    existed = path.exists()
    store = open_store(config, settings.data_dir)
    await store.open()
    await store.close()
    if dsn is None:
        return [] if existed else [f"created {path}"]
    await add_missing_columns(dsn, schema, _ddl("postgresql"))
    where = mask(dsn) + (f" schema {schema}" if schema else "")
    return created(before, await pg_tables(dsn, schema),
                   expected_columns(_ddl("postgresql")), where)
