"""midway-router: routing rules, fallback chains and pooled API keys under rate limits.

Every hook finds this instance's :class:`~midway_router.router.Router` in
``midway.services["router"]``, so several midway instances can share one process.
"""

from __future__ import annotations

import weakref

import click
from aiohttp import web

from midway import Exchange, Midway, Retry, Upstream, hookimpl
from midway.exchange import Attempt
from midway_router import routes
from midway_router.metrics import RouterMetrics
from midway_router.operations import config_check  # noqa: F401 (hook)
from midway_router.router import Router
from midway_router.settings import RouterConfigError, parse
from midway_router.status import SnapshotWriter

__all__ = ["Router", "RouterConfigError"]

_metrics: weakref.WeakKeyDictionary[Midway, RouterMetrics] = weakref.WeakKeyDictionary()
_writers: weakref.WeakKeyDictionary[Midway, SnapshotWriter] = weakref.WeakKeyDictionary()


def _router(exchange: Exchange) -> Router | None:
    midway = exchange.midway
    if midway is None:
        return None
    router: Router | None = midway.services.get("router")
    return router if router is not None and router.active else None


@hookimpl
def register_metrics(midway: Midway) -> None:
    if midway.metrics is not None:
        _metrics[midway] = RouterMetrics(midway.metrics.registry)


@hookimpl
async def startup(midway: Midway) -> None:
    router = Router(parse(midway.config("router")), _metrics.get(midway))
    await router.shared.start(router.apply)
    midway.services["router"] = router
    if router.active:
        writer = SnapshotWriter(router, midway.data_dir, midway.worker_index)
        _writers[midway] = writer
        writer.start()


@hookimpl
async def shutdown(midway: Midway) -> None:
    writer = _writers.pop(midway, None)
    if writer is not None:
        await writer.stop()
    router: Router | None = midway.services.get("router")
    if router is not None:
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


