"""``midway config check`` and ``midway db upgrade`` for the cache store."""

from __future__ import annotations

from midway import Midway, hookimpl
from midway.config import ConfigError
from midway.storage import check_store, upgrade_store
from midway_cache.config import CacheConfig
from midway_cache.extras import require, semantic_modules
from midway_cache.stores import LABEL, sql_layout
from midway_cache.stores.sql import cache_schema


@hookimpl
async def config_check(midway: Midway) -> list[str]:
    config = midway.options("cache", CacheConfig)  # invalid settings raise: reported
    if not config.enabled:
        return []
    problems = []
    if config.semantic:
        try:
            require("[cache] semantic = true", semantic_modules(config))
        except ConfigError as exc:
            problems.append(str(exc))
    store = config.store
    table, pg_schema = sql_layout(config, store)
    return problems + await check_store(store, cache_schema(table), label=LABEL,
                                        pg_schema=pg_schema)


@hookimpl
async def db_upgrade(midway: Midway) -> list[str]:
    """Create or migrate the SQL store's tables; Redis needs none."""
    config = midway.options("cache", CacheConfig)
    store = config.store
    if not config.enabled or store.kind == "redis":
        return []
    table, pg_schema = sql_layout(config, store)
    return await upgrade_store(store, cache_schema(table), label=LABEL, pg_schema=pg_schema)
