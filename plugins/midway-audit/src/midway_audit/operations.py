"""``midway config check`` and ``midway db upgrade`` for the audit store."""

from __future__ import annotations

from midway import Midway, hookimpl
from midway.storecheck import (
    add_missing_columns,
    check_postgres,
    check_sqlite,
    created,
    expected_columns,
    mask,
    pg_tables,
)
from midway_audit.config import AuditConfig
from midway_audit.pg_store import SCHEMA
from midway_audit.store import open_store

LABEL = "[audit] store"


def _config(midway: Midway) -> AuditConfig:
    return AuditConfig.from_table(midway.config("audit"), midway.settings.data_dir)


@hookimpl
async def config_check(midway: Midway) -> list[str]:
    config = _config(midway)  # an invalid table raises: reported as this plugin's problem
    problems = []
    if config.is_postgres:
        problems += await check_postgres(LABEL, config.store, config.schema,
                                         expected_columns(SCHEMA))
    else:
        problems += check_sqlite(LABEL, config.sqlite_path(midway.settings.data_dir))
    if config.jsonl is not None:
        problems += _check_jsonl(config)
    return problems


def _check_jsonl(config: AuditConfig) -> list[str]:
    """The JSONL sink's directory must be creatable and writable."""
    assert config.jsonl is not None
    directory = config.jsonl.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".midway-audit-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return [f"[audit] jsonl: {directory} is not writable ({exc.strerror})"]
    return []


@hookimpl
async def db_upgrade(midway: Midway) -> list[str]:
    """The store creates its tables (and schema) when it opens, idempotently; columns a newer
    version added are then added to older tables."""
    config = _config(midway)
    tables = expected_columns(SCHEMA)
    if not config.is_postgres:
        path = config.sqlite_path(midway.settings.data_dir)
        existed = path.exists()
        store = open_store(config, midway.settings.data_dir)
        await store.open()
        await store.close()
        return [] if existed else [f"created {path}"]
    before = await pg_tables(config.store, config.schema)
    store = open_store(config, midway.settings.data_dir)
    await store.open()
    await store.close()
    await add_missing_columns(config.store, config.schema, SCHEMA)
    after = await pg_tables(config.store, config.schema)
    where = mask(config.store) + (f" schema {config.schema}" if config.schema else "")
    return created(before, after, tables, where)
