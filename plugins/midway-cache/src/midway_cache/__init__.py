"""midway-cache: exact and semantic response caching for midway, safe for agents.

Every hook finds this instance's :class:`~midway_cache.plugin.Cache` in
``midway.services[CACHE]`` (created in ``startup``), so several midway instances may share
one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from midway import Exchange, Midway, Response, SSEEvent, hookimpl
from midway.services import ServiceKey
from midway.timeparse import format_duration
from midway_cache.config import CacheConfig
from midway_cache.operations import config_check, db_upgrade  # noqa: F401 (hooks)
from midway_cache.plugin import Cache

if TYPE_CHECKING:
    import click

__version__ = "0.1.0"
__all__ = ["CACHE", "Cache", "CacheConfig", "__version__"]

# What other plugins (the dashboard) look up: midway.services.get(CACHE) is a Cache.
CACHE: ServiceKey[Cache] = ServiceKey("cache")


def _cache(midway: Midway | None) -> Cache | None:
    return midway.services.get(CACHE) if midway is not None else None


@hookimpl
async def startup(midway: Midway) -> None:
    registry = midway.metrics.registry if midway.metrics is not None else None
    cache = Cache(midway.options("cache", CacheConfig), registry)
    midway.services[CACHE] = cache  # also when disabled: the dashboard shows it
    if cache.config.enabled:
        await cache.start(midway)


@hookimpl
def describe(midway: Midway) -> str:
    cache = _cache(midway)
    config = cache.config if cache is not None else midway.options("cache", CacheConfig)
    if not config.enabled:
        return "off ([cache] enabled = false)"
    semantic = ""
    if config.semantic:
        window = (f", {config.embedder_window}-token window" if config.embedder == "minilm"
                  else "")
        semantic = (f", similar prompts too ({config.semantic_mode}, {config.embedder} "
                    f"similarity >= {config.default_threshold:.2f}, guard "
                    f"{'on' if config.semantic_guard else 'off'}, verifier "
                    f"{'on' if config.semantic_verifier else 'off'}{window})")
    who = (f"requests matching {len(config.rules)} [cache] rule(s) or sending "
           "x-midway-cache: use" if config.rules else
           "only requests sending x-midway-cache: use (no [cache] rules: off for the rest)")
    return (f"answers {who}, from {config.store} for {format_duration(config.ttl)}, "
            f"shared per {config.share}{semantic}")


@hookimpl
async def shutdown(midway: Midway) -> None:
    cache = _cache(midway)
    if cache is not None:
        await cache.stop()


# First: a hit answers before the other plugins' pre_request (billing reserves nothing for it).
@hookimpl(tryfirst=True)
async def pre_request(exchange: Exchange) -> Response | None:
    cache = _cache(exchange.midway)
    return await cache.pre_request(exchange) if cache is not None else None


@hookimpl
def on_chunk(exchange: Exchange, event: SSEEvent) -> None:
    cache = _cache(exchange.midway)
    if cache is not None:
        cache.on_chunk(exchange, event)


@hookimpl
async def post_response(exchange: Exchange) -> None:
    cache = _cache(exchange.midway)
    if cache is not None:
        await cache.post_response(exchange)


@hookimpl
async def check_ready(midway: Midway) -> list[str] | None:
    cache = _cache(midway)
    if cache is None or cache.store is None:
        return None
    problem = await cache.store.ping()
    return [problem] if problem else None


@hookimpl
def register_commands(cli: click.Group) -> None:
    from midway_cache.commands import cache_group

    cli.add_command(cache_group)
