"""``midway config check`` and ``midway db upgrade`` for the audit store."""

from __future__ import annotations

from midway import Midway, hookimpl
from midway.storage import check_store, upgrade_store
from midway_audit.config import STORE_LABEL, AuditConfig
from midway_audit.stores.schema import SCHEMA


def _config(midway: Midway) -> AuditConfig:
    return AuditConfig.from_table(midway.config("audit"), midway.settings.data_dir)


@hookimpl
async def config_check(midway: Midway) -> list[str]:
    config = _config(midway)  # an invalid table raises: reported as this plugin's problem
    problems = await check_store(config.store, SCHEMA, label=STORE_LABEL, pg_schema=config.schema)
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
    """Create the tables (and PostgreSQL schema), or add the columns a newer version added."""
    config = _config(midway)
    return await upgrade_store(config.store, SCHEMA, label=STORE_LABEL, pg_schema=config.schema)
