"""Cache stores: embedded SQLite (default), PostgreSQL or Redis, chosen by ``store``."""

from __future__ import annotations

from midway.storage import StoreURL, open_database
from midway_cache.config import CacheConfig
from midway_cache.stores.base import COUNTERS, Candidate, Entry, Store

__all__ = ["COUNTERS", "LABEL", "Candidate", "Entry", "Store", "make_store", "sql_layout"]

LABEL = "[cache] store"  # how load_table names the store setting, for the same messages


def make_store(config: CacheConfig) -> Store:
    """The store ``config.store`` names (not opened yet)."""
    url = config.store
    if url.kind == "redis":
        from midway_cache.extras import require

        require("a Redis [cache] store", ("redis",))
        from midway_cache.stores.redis import RedisStore

        assert url.url is not None
        return RedisStore(url.url, config.key_prefix, config.max_bytes, config.max_entries)
    from midway_cache.stores.sql import SQLStore

    table, pg_schema = sql_layout(config, url)
    db = open_database(url, schema=pg_schema, label=LABEL, max_pool=8)
    return SQLStore(db, table, config.max_bytes, config.max_entries)


def sql_layout(config: CacheConfig, url: StoreURL) -> tuple[str | None, str | None]:
    """The SQL store's table name and PostgreSQL schema: the ``table`` and ``schema`` settings
    are PostgreSQL's; an SQLite file keeps the table names it has always had (``None``)."""
    if url.kind == "postgresql":
        return config.table, config.schema
    return None, None
