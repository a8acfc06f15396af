"""``midway config check`` for the router: its table (upstreams, rules, credentials) and the
Redis it shares key health through. Redis holds no schema, so there is nothing to upgrade."""

from __future__ import annotations

from midway import Midway, hookimpl
from midway.storage.schema import check_redis
from midway_router import pool
from midway_router.settings import RouterSettings


@hookimpl
async def config_check(midway: Midway) -> list[str]:
    settings = midway.options("router", RouterSettings)  # invalid upstreams or rules raise
    for spec in settings.upstreams:
        pool.build(spec)  # resolves credentials: a missing variable or file raises
    if settings.state is None:
        return []
    return await check_redis("[router] state", settings.state)
