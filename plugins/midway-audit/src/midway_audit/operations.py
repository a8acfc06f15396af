"""``midway config check`` and ``midway db upgrade`` for the audit store."""

from __future__ import annotations

from pathlib import Path

from midway import Midway, hookimpl
from midway.storage import check_store, upgrade_store
from midway_audit.config import STORE_LABEL, AuditConfig
from midway_audit.stores.schema import SCHEMA


@hookimpl
async def config_check(midway: Midway) -> list[str]:
    # An invalid table raises: reported as this plugin's problem.
    config = midway.options("audit", AuditConfig)
    problems = await check_store(config.store, SCHEMA, label=STORE_LABEL, pg_schema=config.schema)
    jsonl = config.jsonl_path(midway.data_dir)
    if jsonl is not None:
        problems += _check_jsonl(jsonl)
    return problems


def _check_jsonl(jsonl: Path) -> list[str]:
    """The JSONL sink's directory must be creatable and writable."""
    directory = jsonl.parent
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
    """Create the tables (and PostgreSQL schema), or add the columns a newer version added."""
    config = midway.options("audit", AuditConfig)
    return await upgrade_store(config.store, SCHEMA, label=STORE_LABEL, pg_schema=config.schema)
