"""``midway config check`` and ``midway db upgrade`` for the cache store."""

from __future__ import annotations

from midway import Midway, hookimpl
from midway.storage import check_store, upgrade_store
from midway_cache.config import load_config
from midway_cache.stores import LABEL, sql_layout, store_url
from midway_cache.stores.sql import cache_schema


@hookimpl
async def config_check(midway: Midway) -> list[str]:
    config = load_config(midway.config("cache"))  # invalid settings raise: reported
    if not config.enabled:
        return []
    store = store_url(config, midway.settings.data_dir)  # refuses unknown stores
    table, pg_schema = sql_layout(config, store)
    return await check_store(store, cache_schema(table), label=LABEL, pg_schema=pg_schema)


@hookimpl
async def db_upgrade(midway: Midway) -> list[str]:
    """Create or migrate the SQL store's tables; Redis needs none."""
    config = load_config(midway.config("cache"))
    store = store_url(config, midway.settings.data_dir)
    if not config.enabled or store.kind == "redis":
        return []
    table, pg_schema = sql_layout(config, store)
    return await upgrade_store(store, cache_schema(table), label=LABEL, pg_schema=pg_schema)
