"""``midway billing report | sessions | session | budgets | batches | release-batch | prices
[update] | reprice | reconcile``."""

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
from midway_billing import catalogue_file
from midway_billing.anthropic_report import (
    ADMIN_URL,
    AdminAPIError,
    AdminClient,
    compare,
    day_range,
)
from midway_billing.config import BillingConfig
from midway_billing.plugin import Billing
from midway_billing.pricing import Catalogue, PriceError, PriceTable

T = TypeVar("T")
def _config(settings: Settings) -> BillingConfig:
    try:
        return settings.options("billing", BillingConfig)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _billing(settings: Settings) -> Billing:
    """The billing service as `midway serve` would build it: the catalogue installed in the
    data dir (if any), with the config's overrides."""
    try:
        return Billing(_config(settings), data_dir=settings.data_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _with_billing(settings: Settings, fn: Callable[[Billing], Awaitable[T]]) -> T:
    async def run() -> T:
        billing = _billing(settings)
        await billing.store.open()
        try:
            return await fn(billing)
        finally:
            await billing.store.close()

    return asyncio.run(run())


@click.group("billing")
def billing_group() -> None:
    """Costs, budgets and prices recorded by midway-billing."""


def _spend_limits() -> click.Group:
    from midway_billing.spendlimit_cli import spend_limits_group

    return spend_limits_group


billing_group.add_command(_spend_limits())


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
        _echo_csv(rows, fields)
        return
    if not rows:
        click.echo("no spend recorded")
        return
    click.echo(Table(columns(by, "requests", "input_tokens", "output_tokens",
                             "cache_write_5m_tokens", "cache_write_1h_tokens",
                             "cache_read_tokens", "cost_usd", "saved_usd", "unpriced",
                             optional=["cache_write_1h_tokens", "cache_write_5m_tokens",
                                       "cache_read_tokens"],
                             keep=[by, "cost_usd", "unpriced"]),
                     wide=wide).render(rows))
    unpriced = sum(int(row["unpriced"]) for row in rows)
    if unpriced:
        click.echo(f"{unpriced} request(s) used models the price catalogue does not list: "
                   "billed by its unknown-model rule (see `midway billing prices`), not at "
                   "their real price; `--by model` names them")


def _echo_csv(rows: list[dict[str, Any]], fields: list[str]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    click.echo(out.getvalue(), nl=False)


AGENT_FIELDS = ["session_id", "agent_id", "parent_agent_id", "depth", "requests",
                "own_cost_usd", "subtree_cost_usd"]


def _agent_report(settings: Settings, since: float | None, until: float | None,
                  as_json: bool, as_csv: bool, wide: bool) -> None:
    rows = _with_billing(settings, lambda b: b.agents(since, until))
    if as_json:
        click.echo(to_json(rows))
        return
    if as_csv:
        _echo_csv(rows, AGENT_FIELDS)
        return
    if not rows:
        click.echo("no spend recorded")
        return
    shown = [{**r, "session": r["session_id"] or "(no session)",
              "agent": "  " * r["depth"] + r["agent_id"]} for r in rows]
    click.echo(Table(columns("session", "agent", "requests", "own_cost_usd",
                             "subtree_cost_usd", keep=["session", "agent", "subtree_cost_usd"]),
                     wide=wide).render(shown))


@billing_group.command("sessions")
@click.option("--since", type=TIME, default="7d", show_default=True,
              help="Sessions begun from this time (ISO, unix seconds, or 7d/12h ago).")
@click.option("--until", type=TIME, default=None, help="Begun before this time.")
@click.option("--principal", default=None, help="Only this principal's requests.")
@click.option("--team", default=None, help="Only this team's requests.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True,
              help="At most this many sessions, the latest first.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of sessions.")
@wide_option
@settings_options
def sessions(settings: Settings, since: float | None, until: float | None,
             principal: str | None, team: str | None, limit: int, as_json: bool,
             wide: bool) -> None:
    """Claude Code sessions, latest first: who, start, duration, turns, tokens, cost, the
    share of the prompt read from the cache, and errors."""
    rows = _with_billing(settings, lambda b: b.sessions(since, until, limit, principal, team))
    if as_json:
        click.echo(to_json(rows))
        return
    if not rows:
        click.echo("no Claude Code sessions recorded (requests carry "
                   "x-claude-code-session-id)")
        return
    shown = [{**r, "who": r["principal_name"] or r["principal"],
              "duration": f"{r['duration_s']:.0f}s",
              "cached": "-" if r["cache_read_share"] is None
              else f"{r['cache_read_share']:.0%}",
              "tokens": r["input_tokens"] + r["output_tokens"] + r["cache_read_tokens"]
              + r["cache_write_5m_tokens"] + r["cache_write_1h_tokens"]} for r in rows]
    click.echo(Table(columns("session_id", "who", "started_at", "duration", "turns",
                             "agents", "tokens", "cost_usd", "cached", "errors",
                             optional=["agents", "duration", "tokens"],
                             keep=["session_id", "cost_usd"]),
                     wide=wide).render(shown))


@billing_group.command("session")
@click.argument("session_id")
@click.option("--principal", default=None, help="Only this principal's requests.")
@click.option("--team", default=None, help="Only this team's requests.")
@click.option("--json", "as_json", is_flag=True, help="Print the session as JSON.")
@wide_option
@settings_options
def session(settings: Settings, session_id: str, principal: str | None, team: str | None,
            as_json: bool, wide: bool) -> None:
    """One Claude Code session: its turns in order, its subagents with their own cost, and
    the turns where prompt caching broke, with the likely cause."""
    found = _with_billing(settings, lambda b: b.session(session_id, principal, team))
    if found is None:
        raise click.ClickException(f"no session {session_id!r} in the ledger "
                                   "(`midway billing sessions` lists them)")
    if as_json:
        click.echo(to_json(found))
        return
    share = found["cache_read_share"]
    click.echo(f"session {session_id}: {found['turns']} turn(s), {found['agents']} "
               f"subagent(s), ${found['cost_usd']}, started {found['started_at']}, "
               f"{found['duration_s']:.0f}s, cache read "
               f"{'-' if share is None else f'{share:.0%}'} of the prompt, "
               f"{found['errors']} error(s), {found['cache_breaks']} cache break(s)")
    turns = [{**t, "agent": t["agent_id"] or "(main)",
              "cached": "-" if t["cache_read_share"] is None
              else f"{t['cache_read_share']:.0%}",
              "cache_break": (f"{t['cache_break']['cause']}: {t['cache_break']['detail']}"
                              if t["cache_break"] else "")} for t in found["timeline"]]
    click.echo(Table(columns("turn", "started_at", "agent", "model", "status",
                             "input_tokens", "cache_read_tokens", "output_tokens", "cost_usd",
                             "cached", "cache_break",
                             optional=["started_at", "input_tokens", "output_tokens"],
                             keep=["turn", "cost_usd", "cache_break"]),
                     wide=wide).render(turns))
    click.echo("\nSubagents (own cost, and with the agents they spawned)")
    agents = [{**a, "agent": "  " * a["depth"] + a["agent_id"]} for a in found["subagents"]]
    click.echo(Table(columns("agent", "requests", "own_cost_usd", "subtree_cost_usd",
                             keep=["agent"]), wide=wide).render(agents))
    if found["truncated"]:
        click.echo("(the session is longer: its first turns are shown)")


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


@billing_group.command("batches")
@click.option("--held", is_flag=True, help="Only batches still holding budget.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000),
              help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@wide_option
@settings_options
def batches(settings: Settings, held: bool, limit: int, as_json: bool, wide: bool) -> None:
    """Message Batches submitted through midway: what each still holds on the budgets and
    what its results were charged so far (they are priced when fetched through midway)."""
    rows = _with_billing(settings, lambda b: b.batches(held, limit))
    if as_json:
        click.echo(to_json(rows))
        return
    if not rows:
        click.echo("no batches holding budget" if held else "no batches")
        return
    click.echo(Table(columns("batch_id", "submitted_at", "principal_name", "team", "held_usd",
                             "charged_usd", "results", "ended", "released_by",
                             optional=["team", "released_by"],
                             keep=["batch_id", "held_usd", "charged_usd"]),
                     wide=wide).render(rows))


@billing_group.command("release-batch")
@click.argument("batch_id")
@settings_options
def release_batch(settings: Settings, batch_id: str) -> None:
    """Release what BATCH_ID still holds on the budgets, for a batch whose results will not be
    fetched through midway (read at the upstream directly, or expired there). Results
    fetched later are still charged. Logged with who ran it."""
    from midway_billing.spendlimit_cli import cli_actor

    actor = cli_actor()
    released = _with_billing(settings, lambda b: b.release_batch(batch_id, actor))
    if released is None:
        raise click.ClickException(f"no batch {batch_id!r} was submitted through midway "
                                   "(see `midway billing batches`)")
    click.echo(f"{batch_id}: released ${released}" if released != "0" else
               f"{batch_id}: holds nothing (its results were priced, or it was released)")


class _PricesGroup(click.Group):
    """`prices`, `prices MODEL` and `prices update SOURCE`: a word that is not a subcommand
    is a model name."""

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "show", self.commands["show"], args
        return super().resolve_command(ctx, args)


@billing_group.group("prices", cls=_PricesGroup, invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@wide_option
@settings_options
@click.pass_context
def prices(ctx: click.Context, settings: Settings, as_json: bool, wide: bool) -> None:
    """The price catalogue in force (USD per million tokens); `prices MODEL`: the price of
    MODEL; `prices update FILE|URL`: install a new catalogue."""
    if ctx.invoked_subcommand is None:
        _show_prices(settings, None, as_json, wide)


@prices.command("show", hidden=True)
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@wide_option
@settings_options
def prices_show(settings: Settings, model: str, as_json: bool, wide: bool) -> None:
    """The price of MODEL."""
    _show_prices(settings, model, as_json, wide)


def _show_prices(settings: Settings, model: str | None, as_json: bool, wide: bool) -> None:
    table = _billing(settings).prices
    if model is not None:
        price = table.lookup(model)
        if price is None:
            policy = (f"billed at the unknown-model rate (${table.unknown.input} / "
                      f"${table.unknown.output} per MTok in / out), flagged unpriced"
                      if table.unknown is not None else "recorded at $0, flagged unpriced")
            raise click.ClickException(f"no price for {model!r} in catalogue "
                                       f"{table.version}: it is {policy}; add "
                                       f"[billing.prices.\"{model}\"] or update the catalogue")
        rows = [price.as_dict()]
    else:
        rows = [p.as_dict() for _, p in sorted(table.prices.items())]
    if as_json:
        click.echo(to_json({"version": table.version, "prices": rows,
                            "unknown_model": table.unknown.as_dict() if table.unknown
                            else None} if model is None else rows[0]))
        return
    for row in rows:
        row["modifiers"] = ", ".join(
            name for name, key in (("tiers", "tiers"), ("fast", "fast"), ("geo", "geo"),
                                   ("dated", "previous")) if key in row)
    click.echo(Table(columns("model", "family", "input", "cache_write_5m", "cache_write_1h",
                             "cache_read", "output", "modifiers", "web_search_per_request",
                             "batch_discount", "as_of", "source",
                             optional=["web_search_per_request", "batch_discount", "family",
                                       "as_of", "source", "modifiers"],
                             keep=["model"]), wide=wide).render(rows))
    if model is None:
        unknown = (f"unknown models: ${table.unknown.input} / ${table.unknown.output} per MTok "
                   "in / out, flagged unpriced" if table.unknown is not None
                   else "unknown models: $0, flagged unpriced")
        click.echo(f"catalogue {table.version}; {unknown}")


@prices.command("update")
@click.argument("source")
@click.option("--dry-run", is_flag=True, help="Check it and show what changes; install nothing.")
@settings_options
def prices_update(settings: Settings, source: str, dry_run: bool) -> None:
    """Install the catalogue at SOURCE (a file or an http(s) URL) as the prices in force.

    It is checked first (with this config's overrides over it) and written atomically to
    `prices_file` in the data dir; running instances swap to it within
    `prices_watch_interval` seconds, without a restart."""
    config = _config(settings)
    try:
        text = catalogue_file.fetch(source)
        catalogue = Catalogue.parse(text, source)
        new = config.price_table(catalogue)
    except PriceError as exc:
        raise click.ClickException(f"not installed: {exc}") from None
    try:
        old = _billing(settings).prices
    except click.ClickException as exc:  # a broken installed file: this repairs it
        click.echo(f"replacing an invalid catalogue: {exc.message}")
        old = config.price_table()
    for line in _differences(old, new):
        click.echo(line)
    path = catalogue_file.catalogue_path(config.prices_file, settings.data_dir)
    if dry_run:
        click.echo(f"catalogue {catalogue.version} is valid ({len(catalogue.prices)} models); "
                   "--dry-run: not installed")
        return
    catalogue_file.install(path, catalogue)
    click.echo(f"installed catalogue {catalogue.version} ({len(catalogue.prices)} models) at "
               f"{path}; running instances use it within {config.prices_watch_interval:g} s; "
               "`midway billing reprice --since …` prices past requests again")


def _differences(old: PriceTable, new: PriceTable) -> list[str]:
    lines = [f"version: {old.version} -> {new.version}"]
    for model in sorted(set(old.prices) | set(new.prices)):
        before, after = old.prices.get(model), new.prices.get(model)
        if before is None:
            lines.append(f"+ {model}")
        elif after is None:
            lines.append(f"- {model} (then billed by the unknown-model rule)")
        else:
            a = {k: v for k, v in before.as_dict().items() if k not in ("source", "as_of")}
            b = {k: v for k, v in after.as_dict().items() if k not in ("source", "as_of")}
            changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            if changed:
                lines.append(f"~ {model}: " + ", ".join(
                    f"{k} {a.get(k)} -> {b.get(k)}" for k in changed))
    return lines


@billing_group.command("reprice")
@click.option("--since", type=TIME, required=True,
              help="From this time (ISO, unix seconds, or 7d/12h ago; naive times are UTC).")
@click.option("--until", type=TIME, default=None, help="Before this time.")
@click.option("--dry-run", is_flag=True, help="Show the differences; record nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
def reprice(settings: Settings, since: float, until: float | None, dry_run: bool,
            as_json: bool) -> None:
    """Price the requests of a period again with the prices in force (after a catalogue or
    override correction). Each difference is recorded as a correction row beside the
    original, which stays as it was; budgets already charged are not changed."""
    result = _with_billing(settings, lambda b: b.reprice(since, until, apply=not dry_run))
    if as_json:
        click.echo(to_json(result))
        return
    if result["changes"]:
        click.echo(Table(columns("id", "model", "created_at", "was_usd", "now_usd",
                                 "delta_usd", "was_version", "rule",
                                 optional=["was_version", "rule", "created_at"],
                                 keep=["id", "delta_usd"])).render(result["changes"]))
    verb = "would record" if dry_run else "recorded"
    click.echo(f"{result['rows']} row(s) priced again with catalogue {result['version']}: "
               f"{result['changed']} differ, {verb} corrections totalling "
               f"${result['delta_usd']}"
               + (f"; {result['skipped_batch']} batch row(s) left alone"
                  if result["skipped_batch"] else ""))


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
