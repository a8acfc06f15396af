"""midway-router: routing rules, fallback chains and pooled API keys under rate limits.

The plugin's state in one running midway is its :class:`~midway_router.router.Router`, built
from the ``[router]`` table at start-up and published as ``midway.services[ROUTER]``; every
hook finds it there through the ``midway`` instance, so several instances can share a process.
"""

from __future__ import annotations

import logging

import click
from aiohttp import web

from midway import Exchange, Midway, Retry, Upstream, hookimpl
from midway.exchange import Attempt
from midway.preflight import doubled_v1
from midway_router import routes
from midway_router.metrics import RouterMetrics
from midway_router.operations import config_check  # noqa: F401 (hook)
from midway_router.router import ROUTER, Router
from midway_router.settings import RouterSettings
from midway_router.status import SnapshotWriter

__all__ = ["ROUTER", "Router", "RouterSettings"]
log = logging.getLogger("midway.router")


def _router(exchange: Exchange) -> Router | None:
    midway = exchange.midway
    router = midway.services.get(ROUTER) if midway is not None else None
    return router if router is not None and router.active else None


@hookimpl
async def startup(midway: Midway) -> None:
    metrics = RouterMetrics(midway.metrics.registry) if midway.metrics is not None else None
    config = midway.options("router", RouterSettings)
    if midway.worker_index == 0:
        for spec in config.upstreams:
            doubled = doubled_v1(spec.url, f"[router] upstream {spec.name!r}")
            if spec.kind == "anthropic" and doubled:
                log.warning("%s", doubled)
    router = Router(config, metrics)
    await router.shared.start(router.apply)
    midway.services[ROUTER] = router
    await router.start_tokens()
    # Published even without routes: `midway router status` then tells "passing requests
    # through" from "no server running".
    router.snapshots = SnapshotWriter(router, midway.data_dir, midway.worker_index)
    router.snapshots.start()


@hookimpl
def describe(midway: Midway) -> str:
    config = midway.options("router", RouterSettings)
    if not config.upstreams:
        return ("no upstreams configured ([[router.upstreams]]): requests go to "
                f"{midway.settings.upstream}")
    names = ", ".join(u.name for u in config.upstreams)
    line = f"routes to {names} by {len(config.rules)} rule(s)"
    translated = [u for u in config.upstreams if u.kind in ("openai", "bedrock")]
    pinged = sorted({u.ping_interval for u in translated if u.ping_interval > 0})
    if pinged:  # those vendors send no pings: midway's keep Claude Code's watchdog quiet
        line += ("; pings translated streams after " +
                 " / ".join(f"{interval:g}" for interval in pinged) + " s of vendor silence")
    return line


@hookimpl
def list_models(midway: Midway) -> list[dict[str, str]]:
    return midway.options("router", RouterSettings).named_models()


@hookimpl
async def shutdown(midway: Midway) -> None:
    router = midway.services.pop(ROUTER, None)
    if router is None:
        return
    if router.snapshots is not None:
        await router.snapshots.stop()
    router.stop_tokens()
    await router.shared.close()


@hookimpl
def choose_upstream(exchange: Exchange) -> Upstream | None:
    router = _router(exchange)
    return router.choose(exchange) if router is not None else None


@hookimpl
def upstream_request(exchange: Exchange, attempt: Attempt) -> None:
    router = _router(exchange)
    if router is not None:
        router.sent(exchange, attempt)


@hookimpl
def upstream_response(exchange: Exchange, attempt: Attempt) -> Retry | None:
    router = _router(exchange)
    return router.judge(exchange, attempt) if router is not None else None


@hookimpl
def post_response(exchange: Exchange) -> None:
    router = _router(exchange)
    if router is not None:
        router.finish(exchange)


@hookimpl
def register_routes(app: web.Application, midway: Midway) -> None:
    routes.add(app, midway)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from midway_router.commands import router_group

    cli.add_command(router_group)
