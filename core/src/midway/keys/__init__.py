"""Teams and client keys: a key store, the hot-path authenticator, the admin API and CLI.

Enabled with ``[keys] enabled = true``; see docs/keys.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from midway.keys.cache import KeyCache
from midway.keys.model import KeyRecord, KeysError, Scope
from midway.keys.service import Issued, KeyService
from midway.keys.store import KeyStore, open_store
from midway.secrets_ref import resolve

if TYPE_CHECKING:
    from midway.context import Midway
    from midway.proxy import Proxy

__all__ = ["Issued", "KeyCache", "KeyRecord", "KeyService", "KeyStore", "KeysError", "Scope",
           "install", "open_store"]


def store_enabled(midway: Midway) -> bool:
    return bool(midway.config("keys").get("enabled"))


def install(app: web.Application, midway: Midway, proxy: Proxy) -> None:
    """Wire the key store into a server being built (called from ``build_app``)."""
    if not store_enabled(midway):
        return
    config = midway.config("keys")
    store = open_store(config, midway.settings.data_dir)
    cache = KeyCache(store, size=int(config.get("cache_size", 10_000)),
                     poll_interval=float(config.get("poll_interval", 0.25)),
                     stale_after=float(config.get("stale_after", 5.0)))
    service = KeyService(store, on_change=cache.poll)
    proxy.authenticators.append(cache)
    midway.services["keys"] = service

    from midway.keys.admin_api import AdminAPI, DerivedKeysAPI

    if midway.settings.admin_key:
        AdminAPI(service, resolve(midway.settings.admin_key)).routes(app)
    DerivedKeysAPI(service, cache).routes(app)

    async def start(app: web.Application) -> None:
        await store.open()
        await cache.start()

    async def stop(app: web.Application) -> None:
        await cache.stop()
        await store.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)

