"""midway-dashboard: a live web dashboard served by midway at ``/_midway/``.

Live traffic comes from this process's own window of finished requests (``post_response``);
spend, cache, upstream health and the request list come from the services that the billing,
cache, router and audit plugins publish in ``midway.services`` (under the typed keys they
export). The plugin's own state is its :class:`Dashboard`, ``midway.services[DASHBOARD]``.
"""

from __future__ import annotations

from aiohttp import web

from midway import hookimpl
from midway.config import ConfigError
from midway.context import Midway
from midway.exchange import Exchange
from midway.secrets_ref import SecretError, resolve
from midway.storage import check_store, upgrade_store
from midway_dashboard.app import DASHBOARD, PREFIX, Dashboard
from midway_dashboard.config import DashboardConfig
from midway_dashboard.sessions import SCHEMA

__all__ = ["DASHBOARD", "Dashboard", "DashboardConfig", "config_check", "db_upgrade",
           "describe", "post_response", "register_routes", "shutdown", "startup"]


@hookimpl
def register_routes(app: web.Application, midway: Midway) -> None:
    dashboard = Dashboard(midway, app)
    dashboard.add_routes(app)
    midway.services[DASHBOARD] = dashboard


@hookimpl
def describe(midway: Midway) -> str:
    settings = midway.settings
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    guard = "admin key required" if settings.admin_key else "open to this machine only"
    return f"http://{host}:{settings.port}{PREFIX}/ ({guard})"


@hookimpl
async def startup(midway: Midway) -> None:
    dashboard = midway.services.get(DASHBOARD)
    if dashboard is not None:
        await dashboard.start()


@hookimpl
async def shutdown(midway: Midway) -> None:
    dashboard = midway.services.get(DASHBOARD)
    if dashboard is not None:
        await dashboard.stop()


@hookimpl
async def config_check(midway: Midway) -> list[str]:
    problems = []
    config = None
    try:
        config = midway.options("dashboard", DashboardConfig)
    except ConfigError as exc:
        problems.append(str(exc))
    ref = midway.settings.admin_key
    if ref:
        try:
            resolve(ref)
        except SecretError as exc:
            problems.append(f"admin_key: {exc}")
        if config is not None:  # sessions are stored only when there is a key to log in with
            problems += await check_store(config.store, SCHEMA, label="[dashboard] store")
    return problems


@hookimpl
async def db_upgrade(midway: Midway) -> list[str]:
    """Create the sessions table (only used with an admin key)."""
    config = midway.options("dashboard", DashboardConfig)
    return await upgrade_store(config.store, SCHEMA, label="[dashboard] store")


@hookimpl(trylast=True)
def post_response(exchange: Exchange) -> None:
    # trylast: after billing and the cache have annotated the exchange.
    midway = exchange.midway
    dashboard = midway.services.get(DASHBOARD) if midway is not None else None
    if dashboard is not None:
        dashboard.window.add(exchange)
