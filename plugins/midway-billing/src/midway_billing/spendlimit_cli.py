"""``midway billing spend-limits list | set | delete | effective | audit``: the spend limits of
``/v1/organizations/spend_limits``, on the store directly (audited as ``cli:<user>@<host>``)."""

from __future__ import annotations

import asyncio
import getpass
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from midway.cli import settings_options
from midway.cliformat import Table, columns, to_json
from midway.config import ConfigError, Settings
from midway.storage import stores_created
from midway_billing.config import BillingConfig
from midway_billing.plugin import Billing
from midway_billing.spendlimit_api import audit_event, audit_id, effective_rows
from midway_billing.spendlimits import PERIODS, SpendLimit, SpendLimitError, parse_request

T = TypeVar("T")


def _run(settings: Settings, fn: Callable[[Billing], Awaitable[T]], create: bool = False) -> T:
    async def run() -> T:
        try:
            billing = Billing(settings.options("billing", BillingConfig),
                              data_dir=settings.data_dir)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        await billing.store.open()
        try:
            await billing.reload_limits()
            return await fn(billing)
        finally:
            await billing.store.close()

    if create:  # setting a limit on a gateway that has not served yet makes its store
        with stores_created(True):
            return asyncio.run(run())
    return asyncio.run(run())


def cli_actor() -> str:
    """Who runs this command, as audit rows name them."""
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


def _note_off(settings: Settings) -> None:
    if not settings.options("billing", BillingConfig).spend_limits:
        click.echo("note: [billing] spend_limits is not on; servers do not enforce these "
                   "limits until it is", err=True)


def _scope_text(limit: dict[str, Any] | None) -> str:
    scope = (limit or {}).get("scope") or {}
    if scope.get("type") == "user":
        return f"user {scope['user_id']}"
    if scope.get("type") == "rbac_group":
        return f"group {scope['rbac_group_id']}"
    return "organization"


def _cents(amount: str | None) -> str:
    return "unlimited" if amount is None else f"${int(amount) / 100:,.2f}"


@click.group("spend-limits")
def spend_limits_group() -> None:
    """Spend limits per user, group and organisation (daily, weekly, monthly)."""


@spend_limits_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
def list_limits(settings: Settings, as_json: bool) -> None:
    """Every spend limit."""
    async def work(billing: Billing) -> list[dict[str, Any]]:
        rows = sorted(billing.limits.by_scope.values(), key=lambda s: (s.created_at, s.id))
        return [r.as_dict() for r in rows]

    data = _run(settings, work)
    if as_json:
        click.echo(to_json(data))
        return
    rows = [{"id": d["id"], "scope": _scope_text(d), "period": d["period"],
             "amount": _cents(d["amount"])} for d in data]
    click.echo(Table(columns("id", "scope", "period", "amount")).render(rows)
               if rows else "no spend limits")


@spend_limits_group.command("set")
@click.option("--user", default=None, help="A user: principal id (key id, client key name) "
              "or signed-in subject.")
@click.option("--group", default=None, help="A group: the cap of each of its members.")
@click.option("--org", is_flag=True, help="The organisation's default.")
@click.option("--period", type=click.Choice(PERIODS), default="monthly", show_default=True)
@click.argument("cents")
@settings_options
def set_limit(settings: Settings, user: str | None, group: str | None, org: bool, period: str,
              cents: str) -> None:
    """Create or replace a limit: CENTS is whole USD cents (500 = $5.00), or "none"."""
    if [user is not None, group is not None, org].count(True) != 1:
        raise click.UsageError("give exactly one of --user, --group, --org")
    scope: dict[str, Any] = ({"type": "user", "user_id": user} if user else
                             {"type": "rbac_group", "rbac_group_id": group} if group else
                             {"type": "organization"})
    try:
        kind, scope_id, amount, period = parse_request(
            {"scope": scope, "period": period,
             "amount": None if cents.lower() in ("none", "null") else cents})
    except SpendLimitError as exc:
        raise click.BadParameter(str(exc), param_hint="CENTS") from None
    _note_off(settings)

    async def work(billing: Billing) -> dict[str, Any]:
        now = time.time()
        _, after = await billing.store.put_spend_limit(
            {"id": SpendLimit.new_id(), "scope_type": kind, "scope_id": scope_id,
             "period": period, "amount_cents": amount, "created_at": now, "updated_at": now},
            cli_actor(), audit_id(now))
        return SpendLimit.from_row(after).as_dict()

    limit = _run(settings, work, create=True)
    click.echo(f"{limit['id']}: {_scope_text(limit)}, {period}: {_cents(limit['amount'])}")


@spend_limits_group.command("delete")
@click.argument("limit_id")
@settings_options
def delete_limit(settings: Settings, limit_id: str) -> None:
    """Delete a limit by its id (spl_...)."""
    async def work(billing: Billing) -> dict[str, Any] | None:
        now = time.time()
        return await billing.store.delete_spend_limit(limit_id, cli_actor(), audit_id(now), now)

    if _run(settings, work) is None:
        raise click.ClickException(f"no spend limit {limit_id!r}")
    click.echo(f"deleted {limit_id}")


@spend_limits_group.command("effective")
@click.argument("users", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
def effective(settings: Settings, users: tuple[str, ...], as_json: bool) -> None:
    """USERS' caps per period, where each comes from, and their spend so far."""
    async def work(billing: Billing) -> list[dict[str, Any]]:
        known = {r["principal"]: r for r in await billing.store.principals(
            list(users), None, len(users))}
        return await effective_rows(billing, list(users), known, list(PERIODS))

    data = _run(settings, work)
    if as_json:
        click.echo(to_json(data))
        return
    rows = []
    for d in data:
        source = d["source"]
        origin = "-" if source is None else _scope_text({"scope": source})
        spent = f"${float(d['period_to_date_spend']) / 100:,.4f}"
        rows.append({"user": d["scope"]["user_id"], "period": d["period"],
                     "cap": _cents(d["amount"]), "from": origin, "spent": spent,
                     "resets": d["resets_at"]})
    click.echo(Table(columns("user", "period", "cap", "from", "spent", "resets")).render(rows))


@spend_limits_group.command("audit")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
def audit(settings: Settings, limit: int, as_json: bool) -> None:
    """Changes to spend limits, newest first, with who made them."""
    async def work(billing: Billing) -> list[dict[str, Any]]:
        return [audit_event(r) for r in await billing.store.spend_audit(limit, None)]

    data = _run(settings, work)
    if as_json:
        click.echo(to_json(data))
        return
    rows = [{"when": e["created_at"], "actor": e["actor"], "action": e["action"],
             "limit": e["target_id"],
             "before": _cents(e["before"]["amount"]) if e["before"] else "-",
             "after": _cents(e["after"]["amount"]) if e["after"] else "-"} for e in data]
    click.echo(Table(columns("when", "actor", "action", "limit", "before", "after")).render(rows)
               if rows else "no changes")
