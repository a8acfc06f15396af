"""Cache stores: embedded SQLite (default), Redis or PostgreSQL, chosen by ``store``."""

from __future__ import annotations

from pathlib import Path

from midway_cache.config import CacheConfig, ConfigError
from midway_cache.stores.base import COUNTERS, Candidate, Entry, Store

__all__ = ["COUNTERS", "Candidate", "Entry", "Store", "make_store"]


def make_store(config: CacheConfig, data_dir: Path) -> Store:
    """The store ``config.store`` names (not opened yet)."""
    spec = config.store
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from midway_cache.stores.redis import RedisStore

        return RedisStore(spec, config.key_prefix, config.max_bytes, config.max_entries)
    if spec.startswith(("postgresql://", "postgres://")):
        from midway_cache.stores.postgres import PostgresStore

        return PostgresStore(spec, config.schema, config.table, config.max_bytes,
                             config.max_entries)
    if spec == "sqlite" or spec.endswith((".db", ".sqlite", ".sqlite3")):
        from midway_cache.stores.sqlite import SQLiteStore

        path = data_dir / "cache.db" if spec == "sqlite" else Path(spec)
        return SQLiteStore(path, config.max_bytes, config.max_entries)
    raise ConfigError(f"[cache] store {spec!r}: use \"sqlite\", a .db path, redis://… "
                      "or postgresql://…")
