"""midway-billing: cost to the cent per upstream attempt, attributed to principals, teams and
projects, with budgets that hold under concurrency.

The hooks below find this instance's :class:`~midway_billing.plugin.Billing` in
``midway.services["billing"]``, so several midway instances may share one process.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from midway import Attempt, Exchange, Midway, Response, SSEEvent, hookimpl
from midway.services import ServiceKey
from midway_billing.config import BillingConfig
from midway_billing.metrics import BillingMetrics
from midway_billing.operations import config_check, db_upgrade  # noqa: F401 (hooks)
from midway_billing.plugin import Billing

if TYPE_CHECKING:
    import click
    from aiohttp import web

__all__ = ["BILLING", "Billing", "BillingConfig"]

# What other plugins (the dashboard) look up: midway.services.get(BILLING) is a Billing.
BILLING: ServiceKey[Billing] = ServiceKey("billing")


def _billing(midway: Midway | None) -> Billing | None:
    service = midway.services.get("billing") if midway is not None else None
    return service if isinstance(service, Billing) else None


def _create(midway: Midway) -> Billing:
    billing = _billing(midway)
    if billing is None:
        config = midway.options("billing", BillingConfig)
        metrics = BillingMetrics(midway.metrics.registry) if midway.metrics else None
        billing = Billing(config, metrics, data_dir=midway.settings.data_dir)
        midway.services["billing"] = billing
    return billing


@hookimpl
def register_metrics(midway: Midway) -> None:
    _create(midway)


@hookimpl
async def startup(midway: Midway) -> None:
    await _create(midway).start()


@hookimpl
def describe(midway: Midway) -> str:
    billing = _create(midway)
    config = billing.config
    prices = billing.prices
    unknown = (f"unknown models at ${prices.unknown.input} / ${prices.unknown.output} per MTok "
               "(flagged unpriced)" if prices.unknown is not None
               else "unknown models at $0 (flagged unpriced)")
    watched = (f", watching {billing.prices_watch.path} for a new one"
               if billing.prices_watch is not None and config.prices_watch_interval > 0 else "")
    hard = sum(1 for b in config.budgets if b.hard)
    budgets = (f"{len(config.budgets)} budget(s), {hard} of them hard (reserving output "
               f"tokens at min(max_tokens, {config.reserve_output_tokens}); a hard budget's "
               f"streams are cut when it runs out)" if config.budgets
               else "no budgets ([[billing.budgets]])")
    if config.spend_limits:
        admin = "" if midway.settings.admin_key else \
            " (no [midway] admin_key: the endpoint refuses every call until one is set)"
        spend = (f"; spend limits ON: per user, group ({config.spend_limits_group_mode} of a "
                 f"member's groups) and organisation, daily/weekly/monthly, reloaded every "
                 f"{config.spend_limits_refresh:g} s, managed at "
                 f"/v1/organizations/spend_limits with the admin key{admin}, each person's "
                 f"own at /api/oauth/usage (Claude Code's /usage); store "
                 f"unreachable (or silent for {config.spend_limits_check_timeout:g} s): fail "
                 f"{config.spend_limits_on_store_error}")
    else:
        spend = "; spend limits off ([billing] spend_limits)"
    return (f"prices every request into {config.store} with catalogue {prices.version} "
            f"({len(prices.prices)} models; {unknown}{watched}); {budgets}{spend}")


@hookimpl
def register_routes(app: web.Application, midway: Midway) -> None:
    """``/v1/organizations/spend_limits`` (admins) and ``/api/oauth/usage`` (each person's
    own, for Claude Code's ``/usage``) are served here, never forwarded upstream, once spend
    limits are on."""
    billing = _create(midway)
    if billing.config.spend_limits:
        from midway_billing.spendlimit_api import SpendLimitAPI
        from midway_billing.usage_api import UsageAPI

        SpendLimitAPI(midway, lambda: _billing(midway)).routes(app)
        UsageAPI(midway, lambda: _billing(midway)).routes(app)


@hookimpl
async def shutdown(midway: Midway) -> None:
    billing = _billing(midway)
    if billing is not None:
        await billing.stop()


# After the cache (tryfirst): a cache hit never reaches this, so it is never reserved or refused.
@hookimpl(trylast=True)
async def pre_request(exchange: Exchange) -> Response | None:
    billing = _billing(exchange.midway)
    if billing is None:
        return None
    answer = await billing.pre_request(exchange)
    state = exchange.state.get("billing")
    if answer is None and getattr(state, "watch", None) is not None:
        # Its usage and text (the floor of an interrupted stream); a hard budget's, the text
        # past the mark its reservation sets.
        exchange.observe_stream(sys.modules[__name__], usage_only=True)
    return answer


@hookimpl
def on_chunk(exchange: Exchange, event: SSEEvent) -> Awaitable[None] | None:
    billing = _billing(exchange.midway)
    return billing.on_chunk(exchange, event) if billing else None


# Its write-ahead, for the core to await (no coroutine of its own around it).
@hookimpl
def upstream_request(exchange: Exchange, attempt: Attempt) -> Awaitable[None] | None:
    billing = _billing(exchange.midway)
    return billing.upstream_request(exchange, attempt) if billing is not None else None


# First, so that audit (trylast) and the others see annotations["cost_usd"]. Nothing to
# await for a plain request: its settlement is written by a task of its own.
@hookimpl(tryfirst=True)
def post_response(exchange: Exchange) -> Awaitable[None] | None:
    billing = _billing(exchange.midway)
    return billing.post_response(exchange) if billing is not None else None


@hookimpl
async def check_ready(midway: Midway) -> list[str] | None:
    billing = _billing(midway)
    if billing is None:
        return None
    problem = await billing.store.db.ping()
    return [problem] if problem else None


@hookimpl
def register_commands(cli: click.Group) -> None:
    from midway_billing.commands import billing_group

    cli.add_command(billing_group)
