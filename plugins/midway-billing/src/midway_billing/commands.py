"""``midway billing report | budgets | prices | reconcile``."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from midway.cli import TIME, settings_options
from midway.cliformat import Table, columns, to_json, wide_option
from midway.config import ConfigError, Settings
from midway.secrets_ref import SecretError, resolve
from midway_billing.anthropic_report import (
    ADMIN_URL,
    AdminAPIError,
    AdminClient,
    compare,
    day_range,
)
from midway_billing.config import BillingConfig
from midway_billing.plugin import Billing

T = TypeVar("T")
def _config(settings: Settings) -> BillingConfig:
    try:
        return settings.options("billing", BillingConfig)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _with_billing(settings: Settings, fn: Callable[[Billing], Awaitable[T]]) -> T:
    async def run() -> T:
        billing = Billing(_config(settings))
        await billing.store.open()
        try:
            return await fn(billing)
        finally:
            await billing.store.close()

    return asyncio.run(run())


@click.group("billing")
def billing_group() -> None:
    """Costs, budgets and prices recorded by midway-billing."""


@billing_group.command("report")
@click.option("--by", type=click.Choice(["principal", "team", "project", "model", "day",
                                         "session", "agent"]),
              default="team", show_default=True,
              help="session: per Claude Code session; agent: each session's subagent tree, "
                   "with each agent's own cost and its subtree's.")
@click.option("--since", type=TIME, default=None,
              help="From this time (ISO, unix seconds, or 7d/12h ago; naive times are UTC).")
@click.option("--until", type=TIME, default=None, help="Before this time.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of rows.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@wide_option
@settings_options
def report(settings: Settings, by: str, since: float | None, until: float | None,
           as_json: bool, as_csv: bool, wide: bool) -> None:
    """Totals per group: requests, tokens by kind, cost and saved cost (USD)."""
    if by == "agent":
        _agent_report(settings, since, until, as_json, as_csv, wide)
        return
    rows = _with_billing(settings, lambda b: b.report(by, since, until))
    if as_json:
        click.echo(to_json(rows))
        return
    fields = [by, "requests", "attempts", "input_tokens", "output_tokens",
               "cache_write_5m_tokens", "cache_write_1h_tokens", "cache_read_tokens",
               "web_search_requests", "cost_usd", "saved_usd", "cache_hits", "refused",
               "unpriced", "pending", "reconciled"]
    if as_csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(out.getvalue(), nl=False)
        return
    if not rows:
        click.echo("no spend recorded")
        return
    click.echo(Table(columns(by, "requests", "input_tokens", "output_tokens",
                             "cache_write_5m_tokens", "cache_write_1h_tokens",
                             "cache_read_tokens", "cost_usd", "saved_usd", "unpriced",
                             optional=["cache_write_1h_tokens", "cache_write_5m_tokens",
                                       "unpriced", "cache_read_tokens"],
                             keep=[by, "cost_usd"]),
                     wide=wide).render(rows))


AGENT_FIELDS = ["session_id", "agent_id", "parent_agent_id", "depth", "requests",
                "own_cost_usd", "subtree_cost_usd"]


def _agent_report(settings: Settings, since: float | None, until: float | None,
                  as_json: bool, as_csv: bool, wide: bool) -> None:
    rows = _with_billing(settings, lambda b: b.agents(since, until))
    if as_json:
        click.echo(to_json(rows))
        return
    if as_csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=AGENT_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(out.getvalue(), nl=False)
        return
    if not rows:
        click.echo("no spend recorded")
        return
    shown = [{**r, "session": r["session_id"] or "(no session)",
              "agent": "  " * r["depth"] + r["agent_id"]} for r in rows]
    click.echo(Table(columns("session", "agent", "requests", "own_cost_usd",
                             "subtree_cost_usd", keep=["session", "agent", "subtree_cost_usd"]),
                     wide=wide).render(shown))


@billing_group.command("budgets")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@wide_option
@settings_options
def budgets(settings: Settings, as_json: bool, wide: bool) -> None:
    """Each budget: spent, reserved, remaining and when it resets."""
    rows = _with_billing(settings, lambda b: b.budgets())
    if as_json:
        click.echo(to_json(rows))
        return
    if not rows:
        click.echo("no budgets configured ([[billing.budgets]])")
        return
    click.echo(Table(columns("name", "scope", "value", "period", "mode", "limit_usd",
                             "spent_usd", "reserved_usd", "remaining_usd", "resets_at",
                             optional=["reserved_usd", "mode"],
                             keep=["name", "limit_usd", "spent_usd", "remaining_usd"]),
                     wide=wide).render(rows))


@billing_group.command("prices")
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@wide_option
@settings_options
def prices(settings: Settings, model: str | None, as_json: bool, wide: bool) -> None:
    """The price table in force (USD per million tokens), or the price of MODEL."""
    table = _config(settings).prices
    if model is not None:
        price = table.lookup(model)
        if price is None:
            raise click.ClickException(f"no price for {model!r}: add [billing.prices.\"{model}\"]")
        rows = [price.as_dict()]
    else:
        rows = [p.as_dict() for _, p in sorted(table.prices.items())]
    if as_json:
        click.echo(to_json(rows if model is None else rows[0]))
        return
    click.echo(Table(columns("model", "family", "input", "cache_write_5m", "cache_write_1h",
                             "cache_read", "output", "web_search_per_request",
                             "batch_discount",
                             optional=["web_search_per_request", "batch_discount", "family"],
                             keep=["model"]), wide=wide).render(rows))


@billing_group.command("reconcile")
@click.option("--admin-key", required=True, envvar="ANTHROPIC_ADMIN_API_KEY",
              help="Anthropic Admin API key (sk-ant-admin…), or env:NAME / file:PATH; "
                   "default: $ANTHROPIC_ADMIN_API_KEY. Sent only to --admin-url.")
@click.option("--since", type=TIME, required=True,
              help="From this day (ISO, unix seconds, or 7d ago; whole UTC days).")
@click.option("--until", type=TIME, default=None, help="Before this time (default: now).")
@click.option("--key", "keys", multiple=True, metavar="KEY_ID=APIKEY_ID",
              help="Which Anthropic API key id (apikey_…) a midway upstream key_id "
                   "(its fingerprint in the ledger) is; repeatable.")
@click.option("--admin-url", default=ADMIN_URL, show_default=True,
              help="Where the Admin API is (https://, or http:// to this machine only).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {costs, usage}.")
@wide_option
@settings_options
def reconcile(settings: Settings, admin_key: str, since: float, until: float | None,
              keys: tuple[str, ...], admin_url: str, as_json: bool, wide: bool) -> None:
    """midway's cost and tokens beside Anthropic's own (Usage & Cost Admin API), per day,
    model and API key, with the difference and its likely cause."""
    try:
        secret = resolve(admin_key)
    except SecretError as exc:
        raise click.ClickException(f"--admin-key: {exc}") from None
    key_map = {}
    for item in keys:
        key_id, sep, api_key = item.partition("=")
        if not sep or not key_id or not api_key:
            raise click.ClickException(f"--key {item!r}: expected KEY_ID=APIKEY_ID")
        key_map[key_id] = api_key
    start, end = day_range(since, until if until is not None else time.time())

    async def fetch(billing: Billing) -> dict[str, list[dict[str, Any]]]:
        client = AdminClient(secret, admin_url)
        usage, cost = await asyncio.gather(client.usage(start, end), client.cost(start, end))
        ledger = await billing.store.usage_by_day(start.timestamp(), end.timestamp())
        return compare(ledger, usage, cost, billing.prices, key_map)

    try:
        result = _with_billing(settings, fetch)
    except AdminAPIError as exc:
        raise click.ClickException(f"Anthropic Admin API: {exc}") from None
    if as_json:
        click.echo(to_json({"since": start.isoformat(), "until": end.isoformat(), **result}))
        return
    if not result["costs"] and not result["usage"]:
        click.echo("nothing recorded by midway or reported by Anthropic in this range")
        return
    click.echo("Cost per day and model (USD; difference = Anthropic - midway)")
    click.echo(Table(columns("day", "model", "midway_usd", "anthropic_usd", "difference_usd",
                             "cause", keep=["day", "model", "difference_usd"]),
                     wide=wide).render(result["costs"]))
    click.echo("\nTokens per day, model and API key")
    click.echo(Table(columns("day", "model", "api_key", "midway_tokens", "anthropic_tokens",
                             "difference_tokens", "cause",
                             keep=["day", "model", "difference_tokens"]),
                     wide=wide).render(result["usage"]))
