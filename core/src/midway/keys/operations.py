"""``midway config check`` and ``midway db upgrade`` for the key store (``[keys]``)."""

from __future__ import annotations

from midway.config import Settings
from midway.keys.store import LABEL, SCHEMA, store_url
from midway.storage import check_store, upgrade_store


def enabled(settings: Settings) -> bool:
    return bool(settings.plugin_config("keys").get("enabled"))


def _schema(settings: Settings) -> str | None:
    schema = settings.plugin_config("keys").get("schema")
    return str(schema) if schema else None


async def check(settings: Settings) -> list[str]:
    store = store_url(settings.plugin_config("keys"), settings.data_dir)
    return await check_store(store, SCHEMA, label=LABEL, pg_schema=_schema(settings))


async def upgrade(settings: Settings) -> list[str]:
    """Create the store's tables, or add the columns a newer version added."""
    store = store_url(settings.plugin_config("keys"), settings.data_dir)
    return await upgrade_store(store, SCHEMA, label=LABEL, pg_schema=_schema(settings))
