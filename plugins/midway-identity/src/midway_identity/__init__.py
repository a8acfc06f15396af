"""midway-identity: sign in with the company's OIDC identity provider.

Serves Claude Code's gateway sign-in protocol (``/login`` → "Cloud gateway": OAuth discovery,
the RFC 8628 device flow with midway's verification page, the browser leg against the IdP with
authorization code + PKCE, midway's own short-lived tokens and rotating refresh tokens,
``/managed/settings``), turns a valid token into a :class:`midway.Principal` of kind
``oidc`` through the ``authenticate`` hook, gives each person the model allowlist of their IdP
groups, signs admins in to the dashboard, and ``midway sessions list|revoke`` ends a person's
sessions at once. Off (nothing registered) until ``[identity] issuer`` is set.
"""

from __future__ import annotations

import click
from aiohttp import web

from midway import hookimpl
from midway.config import ConfigError
from midway.context import Midway
from midway.exchange import Exchange, Principal
from midway.storage import check_store, upgrade_store
from midway_identity.config import IdentityConfig
from midway_identity.idp import IdP, IdPError
from midway_identity.service import IDENTITY, Identity, person_id, settings_checksum
from midway_identity.store import SCHEMA

_CONFIG_ERROR = "identity.config_error"

__all__ = ["IDENTITY", "Identity", "IdentityConfig", "authenticate", "check_ready",
           "config_check", "db_upgrade", "describe", "person_id", "register_commands",
           "register_routes", "settings_checksum", "shutdown", "startup"]


@hookimpl
def register_routes(app: web.Application, midway: Midway) -> None:
    try:
        config = midway.options("identity", IdentityConfig)
    except ConfigError as exc:
        # routes are built before start-up, where a raise is only logged: start-up stops
        midway.services[_CONFIG_ERROR] = str(exc)
        return
    if not config.enabled:
        return
    identity = Identity(midway, config)
    identity.add_routes(app)
    midway.services[IDENTITY] = identity
    if config.admin_groups:  # the dashboard's login page links to it (midway_dashboard.SIGN_IN)
        midway.services["dashboard.sign_in"] = ("Sign in with your company account",
                                                "/_midway/identity/login")


@hookimpl
async def startup(midway: Midway) -> None:
    problem = midway.services.get(_CONFIG_ERROR)
    if problem is not None:
        raise ConfigError(problem)
    identity = midway.services.get(IDENTITY)
    if identity is not None:
        await identity.start()


@hookimpl
async def shutdown(midway: Midway) -> None:
    identity = midway.services.pop(IDENTITY, None)
    if identity is not None:
        await identity.stop()


@hookimpl
def describe(midway: Midway) -> str:
    identity = midway.services.get(IDENTITY)
    if identity is None:
        return "off until [identity] issuer is set (Claude Code /login through your IdP)"
    return identity.describe()


@hookimpl
async def check_ready(midway: Midway) -> list[str] | None:
    identity = midway.services.get(IDENTITY)
    return await identity.ready() if identity is not None else None


@hookimpl
async def authenticate(exchange: Exchange, credential: str | None) -> Principal | None:
    midway = exchange.midway
    identity = midway.services.get(IDENTITY) if midway is not None else None
    if identity is None:
        return None
    return await identity.authenticate(credential)


@hookimpl
async def config_check(midway: Midway) -> list[str]:
    try:
        config = midway.options("identity", IdentityConfig)
    except ConfigError as exc:
        return [str(exc)]
    if not config.enabled:
        return []
    problems = await check_store(config.store, SCHEMA, label="[identity] store",
                                 pg_schema=config.schema)
    try:
        await IdP(config).discover()
    except IdPError as exc:
        problems.append(f"[identity] issuer: {exc}")
    return problems


@hookimpl
async def db_upgrade(midway: Midway) -> list[str]:
    config = midway.options("identity", IdentityConfig)
    if not config.enabled:
        return []
    return await upgrade_store(config.store, SCHEMA, label="[identity] store",
                             pg_schema=config.schema)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from midway_identity.commands import sessions_group

    cli.add_command(sessions_group)
