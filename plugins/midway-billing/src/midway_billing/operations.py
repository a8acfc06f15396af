"""``midway config check`` and ``midway db upgrade`` for the billing ledger and budgets."""

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
from midway_billing.config import BillingConfig
from midway_billing.store import SCHEMA

LABEL = "[billing] store"


def _config(midway: Midway) -> BillingConfig:
    # Prices and budgets are validated here too: an invalid table raises, which the core
    # reports as this plugin's problem.
    return BillingConfig.from_table(midway.config("billing"), midway.settings.data_dir)


def _is_postgres(config: BillingConfig) -> bool:
    return config.store.startswith(("postgres://", "postgresql://"))


def _tables() -> dict[str, set[str]]:
    return expected_columns(SCHEMA.format(int="BIGINT", real="DOUBLE PRECISION"))


@hookimpl
async def config_check(midway: Midway) -> list[str]:
    config = _config(midway)
    config.make_store()  # refuses an unknown store kind or schema name, without I/O
    if _is_postgres(config):
        return await check_postgres(LABEL, config.store, config.schema, _tables())
    return check_sqlite(LABEL, config.sqlite_path())


@hookimpl
async def db_upgrade(midway: Midway) -> list[str]:
    """The store creates its schema and tables when it opens, idempotently; columns a newer
    version added are then added to older tables."""
    config = _config(midway)
    if not _is_postgres(config):
        existed = config.sqlite_path().exists()
        store = config.make_store()
        await store.open()
        await store.close()
        return [] if existed else [f"created {config.sqlite_path()}"]
    before = await pg_tables(config.store, config.schema)
    store = config.make_store()
    await store.open()
    await store.close()
    await add_missing_columns(config.store, config.schema,
                              SCHEMA.format(int="BIGINT", real="DOUBLE PRECISION"))
    after = await pg_tables(config.store, config.schema)
    where = mask(config.store) + (f" schema {config.schema}"
                                                if config.schema else "")
    return created(before, after, _tables(), where)
