"""The ``[keys]`` config table (docs/keys.md), declared once: the server, ``midway keys …``,
``config check`` and ``db upgrade`` all build it with ``settings.options("keys", KeysConfig)``."""

from __future__ import annotations

import attrs

from midway.options import option, schema_name, store_option
from midway.storage import StoreURL

LABEL = "[keys] store"  # how the store setting is named in messages


@attrs.define
class KeysConfig:
    enabled: bool = option(False, help="require midway keys and serve them from the store")
    store: StoreURL = store_option(
        "keys.db", help="SQLite path, or postgresql://... (also env:NAME / file:PATH)")
    schema: str | None = option(None, converter=schema_name,
                                help="PostgreSQL schema to use (created if missing)")
    poll_interval: float = option(0.25, gt=0,
                                  help="seconds between checks of the store's change counter")
    cache_size: int = option(10_000, ge=1,
                             help="found and not-found lookups kept in memory (each)")
    stale_after: float = option(5.0, gt=0, help="seconds without a successful poll after "
                                "which the cache is not trusted")
