"""The storage substrate every plugin builds on: one store-URL grammar, one database API over
SQLite and PostgreSQL, instance liveness that survives a database restart, schema check and
upgrade, and retries for writes that must land."""

from midway.storage.url import StoreURL, StoreURLError, mask, parse_store

__all__ = ["StoreURL", "StoreURLError", "mask", "parse_store"]
