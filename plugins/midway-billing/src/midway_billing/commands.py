"""``midway billing report | budgets | prices``."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from midway.cli import TIME, settings_options
from midway.cliformat import Table, columns, to_json, wide_option
from midway.config import ConfigError, Settings
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
