"""``midway replay SESSION``: the command (docs/replay.md)."""

from __future__ import annotations

import asyncio
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from midway.cli import TIME, settings_options
from midway.cliformat import to_json, wide_option
from midway.config import ConfigError, Settings, load_settings
from midway_audit.config import AuditConfig
from midway_audit.replay.report import build, render
from midway_audit.replay.runner import (
    DEFAULT_MAX_TURNS,
    DEFAULT_TIMEOUT,
    MAX_CONCURRENCY,
    Bounds,
    Pricing,
    Replay,
    Replayed,
)
from midway_audit.replay.session import ReplayRefused, Session, Turn, find_session
from midway_audit.stores.store import AuditStore


def _budget(ctx: click.Context, param: click.Parameter, value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value.strip().lstrip("$"))
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not an amount in USD (e.g. 0.50)") from None
    if not amount.is_finite() or amount <= 0:
        raise click.BadParameter("the budget must be a positive amount in USD")
    return amount


@click.command("replay")
@click.argument("session")
@click.option("--upstream", help="Send every turn to this upstream of the config "
              "([[router.upstreams]] name; default: the config's routing).")
@click.option("--model", help="Ask for this model instead of the recorded one.")
@click.option("--max-turns", type=click.IntRange(min=1), default=DEFAULT_MAX_TURNS,
              show_default=True, help="Replay at most this many turns (the first ones).")
@click.option("--budget", callback=_budget, metavar="USD",
              help="Stop before a turn whose estimate would take the replay's cost past this "
                   "(billing's catalogue).")
@click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT,
              show_default=True, help="Seconds a turn may take.")
@click.option("--concurrency", type=click.IntRange(1, MAX_CONCURRENCY), default=1,
              show_default=True, help="Turns in flight at once.")
@click.option("--since", type=TIME, help="Look for the session's records from this time on "
              "(ISO 8601, epoch, or 15m / 2h / 7d ago): faster on a large trail.")
@click.option("--audit-config", type=click.Path(dir_okay=False),
              help="Read the session from the audit trail this config names (default: "
                   "--config's).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@wide_option
@settings_options
def replay(settings: Settings, session: str, upstream: str | None, model: str | None,
           max_turns: int, budget: Decimal | None, timeout: float, concurrency: int,
           since: float | None, audit_config: str | None, as_json: bool, wide: bool) -> None:
    """Send a recorded Claude Code session's requests again, through this config's
    pipeline, and compare each answer with the recorded one."""
    bounds = Bounds(max_turns=max_turns, budget_usd=budget, timeout=timeout,
                    concurrency=concurrency)
    try:
        source = settings if audit_config is None else \
            load_settings(audit_config, data_dir=str(settings.data_dir))
        audit = source.options("audit", AuditConfig)
        pricing = Pricing.of(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if budget is not None and pricing is None:
        raise click.ClickException("--budget needs midway-billing installed: its price "
                                   "catalogue prices the turns")

    def progress(turn: Turn, result: Replayed) -> None:
        if not as_json:
            what = f"status {result.status}" if result.sent else f"not sent ({result.not_sent})"
            click.echo(f"turn {turn.number}/{len(turns)}: {what}", err=True)

    async def main() -> dict[str, Any]:
        store = AuditStore(audit)
        await store.open()
        try:
            found: Session = await find_session(store, session, max_turns, since)
        finally:
            await store.close()
        turns.extend(found.turns)
        run = Replay(settings, found, bounds, upstream, model, pricing)
        results = await run.run(progress)
        costs = [pricing.recorded(t.record) if pricing is not None else
                 (Decimal(str(t.record["cost_usd"])) if t.record.get("cost_usd") is not None
                  else None) for t in found.turns]
        return build(found, results, costs, bounds,
                     str(settings.config_path) if settings.config_path else None,
                     upstream, model, run.stopped)

    turns: list[Turn] = []
    try:
        report = asyncio.run(main())
    except ReplayRefused as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(to_json(report) if as_json else render(report, wide))
