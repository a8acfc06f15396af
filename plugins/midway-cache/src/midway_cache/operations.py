"""``midway config check`` and ``midway db upgrade`` for the cache store.

A mixin of :class:`~midway_cache.plugin.CachePlugin`: the entry point is that object, so its
hooks must be its methods.
"""

from __future__ import annotations

from midway import Midway, hookimpl
from midway.storecheck import (
    check_postgres,
    check_redis,
    check_sqlite,
    created,
    mask,
    pg_tables,
)
from midway_cache.config import CacheConfig, load_config
from midway_cache.stores import make_store
from midway_cache.stores.sqlite import SQLiteStore

LABEL = "[cache] store"

# The columns PostgresStore.open creates, per table suffix (entries, counters, fill locks).
_COLUMNS = {
    "": {"key", "tenant", "partition", "created_at", "expires_at", "last_access", "size",
         "body", "prompt", "vector", "tool_use", "cost_usd"},
    "_counters": {"name", "value"},
    "_locks": {"key", "until"},
}


def _tables(config: CacheConfig) -> dict[str, set[str]]:
    return {config.table + suffix: columns for suffix, columns in _COLUMNS.items()}


def _kind(config: CacheConfig) -> str:
    if config.store.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    if config.store.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    return "sqlite"


class StoreOperations:
    @hookimpl
    async def config_check(self, midway: Midway) -> list[str]:
        config = load_config(midway.config("cache"))  # invalid settings raise: reported
        if not config.enabled:
            return []
        store = make_store(config, midway.settings.data_dir)  # refuses unknown stores
        kind = _kind(config)
        if kind == "redis":
            return await check_redis(LABEL, config.store)
        if kind == "postgresql":
            return await check_postgres(LABEL, config.store, config.schema, _tables(config))
        assert isinstance(store, SQLiteStore)
        return check_sqlite(LABEL, store.path)

    @hookimpl
    async def db_upgrade(self, midway: Midway) -> list[str]:
        """PostgreSQL: the store creates its schema and tables when it opens, idempotently.
        Redis needs none; SQLite is created at every start."""
        config = load_config(midway.config("cache"))
        if not config.enabled or _kind(config) != "postgresql":
            return []
        before = await pg_tables(config.store, config.schema)
        store = make_store(config, midway.settings.data_dir)
        await store.open()
        await store.close()
        after = await pg_tables(config.store, config.schema)
        where = f"{mask(config.store)} schema {config.schema}"
        return created(before, after, _tables(config), where)
