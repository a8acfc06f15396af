"""``midway config check`` for the router: its table (upstreams, rules, credentials) and the
Redis it shares key health through. Redis holds no schema, so there is nothing to upgrade."""

from __future__ import annotations

from midway import Midway, hookimpl
from midway.secrets_ref import SecretError
from midway.storage.schema import check_redis
from midway_router import pool
from midway_router.settings import RouterSettings


@hookimpl
async def config_check(midway: Midway) -> list[str]:
    settings = midway.options("router", RouterSettings)  # invalid upstreams or rules raise
    problems = []
    for spec in settings.upstreams:
        try:
            pool.build(spec)  # resolves credentials: a missing variable or file raises
        except SecretError as exc:
            problems.append(f"[router] {exc}")
    if settings.state is not None:
        problems += await check_redis("[router] state", settings.state)
    return problems
