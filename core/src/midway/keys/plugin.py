"""The key store as a built-in plugin: ``authenticate`` from the store (through its cache),
the admin API and ``/_midway/keys`` routes, and ``config check`` / ``db upgrade`` for
``[keys]``. Does nothing unless ``[keys] enabled``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from midway.config import ConfigError
from midway.hookspecs import hookimpl
from midway.keys.cache import KeyCache
from midway.keys.config import LABEL, KeysConfig
from midway.keys.service import KeyService
from midway.keys.store import SCHEMA, KeyStore, open_store
from midway.secrets_ref import resolve
from midway.services import ServiceKey
from midway.storage import check_store, upgrade_store

if TYPE_CHECKING:
    from midway.context import Midway

KEYS: ServiceKey[KeyService] = ServiceKey("keys")


class KeysPlugin:
    def __init__(self) -> None:
        self.store: KeyStore | None = None
        self.cache: KeyCache | None = None

    @hookimpl
    def register_routes(self, app: web.Application, midway: Midway) -> None:
        try:
            config = midway.options("keys", KeysConfig)
        except ConfigError:
            return  # startup reads the table again and stops with its one-line message
        if not config.enabled:
            return
        service, cache = self._setup(midway, config)

        from midway.keys.admin_api import AdminAPI, DerivedKeysAPI

        if midway.settings.admin_key:
            AdminAPI(service, resolve(midway.settings.admin_key)).routes(app)
        DerivedKeysAPI(service, cache).routes(app)

    def _setup(self, midway: Midway, config: KeysConfig) -> tuple[KeyService, KeyCache]:
        if self.store is None or self.cache is None:
            self.store = open_store(config)
            self.cache = KeyCache(self.store, size=config.cache_size,
                                  poll_interval=config.poll_interval,
                                  stale_after=config.stale_after)
            midway.services[KEYS] = KeyService(self.store, on_change=self.cache.poll)
        return midway.services[KEYS], self.cache

    @hookimpl
    async def startup(self, midway: Midway) -> None:
        config = midway.options("keys", KeysConfig)
        if not config.enabled:
            return
        _, cache = self._setup(midway, config)  # an in-process server may have no routes
        await cache.store.open()
        await cache.start()

    @hookimpl
    async def shutdown(self) -> None:
        if self.cache is not None:
            await self.cache.stop()
        if self.store is not None:
            await self.store.close()

    @hookimpl
    def authenticate(self, credential: str | None) -> object:
        # A Principal, or an awaitable of one when the cache has to ask the store.
        return None if self.cache is None else self.cache.lookup(credential)

    @hookimpl
    async def check_ready(self) -> list[str] | None:
        if self.store is None:
            return None
        problem = await self.store.db.ping()
        return [problem] if problem else None

    @hookimpl
    async def config_check(self, midway: Midway) -> list[str] | None:
        config = midway.options("keys", KeysConfig)
        if not config.enabled:
            return None
        return await check_store(config.store, SCHEMA, label=LABEL, pg_schema=config.schema)

    @hookimpl
    async def db_upgrade(self, midway: Midway) -> list[str] | None:
        config = midway.options("keys", KeysConfig)
        if not config.enabled:
            return None
        return await upgrade_store(config.store, SCHEMA, label=LABEL, pg_schema=config.schema)

