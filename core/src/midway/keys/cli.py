"""``midway keys ...``: issue, list, rotate and revoke client keys from the command line.

``midway.cli`` builds the group with its ``settings_options`` (passed in, so this module
never imports ``midway.cli``, which imports it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from midway.cliformat import Column, Table, to_json, wide_option
from midway.config import ConfigError, Settings
from midway.keys.config import KeysConfig
from midway.keys.model import KeyRecord, KeysError
from midway.keys.service import Issued, KeyService
from midway.keys.store import open_store
from midway.storage import stores_created
from midway.timeparse import parse_duration

T = TypeVar("T")


def _is_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except ConfigError:
        return False
    return True


def _run(settings: Settings, operation: Callable[[KeyService], Awaitable[T]],
         create: bool = False) -> T:
    """Run ``operation`` on the key store; only ``create`` may create the store."""
    config = settings.options("keys", KeysConfig)

    async def main() -> T:
        store = open_store(config)
        await store.open()
        try:
            return await operation(KeyService(store))
        finally:
            await store.close()

    try:
        with stores_created(create):
            return asyncio.run(main())
    except KeysError as exc:
        raise click.ClickException(str(exc)) from None


def _echo_json(data: Any) -> None:
    click.echo(to_json(data))


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _show_issued(issued: Issued, as_json: bool) -> None:
    if as_json:
        _echo_json(issued.as_dict())
        return
    _show(issued.record)
    click.echo(f"secret:   {issued.secret}")
    click.echo("(shown once: store it now; midway keeps only a salted hash)", err=True)


def _show(record: KeyRecord) -> None:
    data = record.as_dict()
    click.echo(f"id:       {data['id']}  ({data['status']})")
    click.echo(f"name:     {data['name']}   team: {data['team'] or '-'}")
    click.echo(f"models:   {', '.join(data['models']) or 'any'}   "
               f"upstreams: {', '.join(data['upstreams']) or 'any'}")
    if data.get("groups"):
        click.echo("groups:   " + ", ".join(data["groups"]))
    if data["labels"]:
        click.echo("labels:   " + ", ".join(f"{k}={v}" for k, v in data["labels"].items()))
    if data["capabilities"]:
        click.echo(f"can:      {', '.join(data['capabilities'])}")
    if data["parent_id"]:
        click.echo(f"parent:   {data['parent_id']}")
    click.echo(f"expires:  {data['expires_at'] or 'never'}")
    for cred in data["credentials"]:
        until = f" (until {cred['expires_at']})" if cred["expires_at"] else ""
        click.echo(f"prefix:   {cred['prefix']}{until}")


def make_keys_group(settings_options: Callable[[Callable[..., Any]], Callable[..., Any]]
                    ) -> click.Group:
    """The ``keys`` command group; ``settings_options`` is :func:`midway.cli.settings_options`."""
    keys_group: click.Group = click.Group(
        "keys", help="Client keys: issue, list, rotate, revoke (store: [keys] in the config).")


    @keys_group.command("create")
    @click.option("--name", required=True, help="Who or what uses the key.")
    @click.option("--team", default=None, help="Team that spends through it.")
    @click.option("--expires", default=None, help="Lifetime (30d, 12h, 3600) or ISO date.")
    @click.option("--models", multiple=True, help="Model globs it may use (repeat or comma-list).")
    @click.option("--upstreams", multiple=True, help="Upstream names it may reach.")
    @click.option("--label", "labels", multiple=True, help="KEY=VALUE label (repeatable).")
    @click.option("--group", "groups", multiple=True,
                  help="Group it belongs to, for group policy (repeat or comma-list).")
    @click.option("--capability", "capabilities", multiple=True,
                  help="Extra capability, e.g. keys:create (may issue derived keys).")
    @click.option("--parent", default=None, help="Derive from this key: scope within its own.")
    @click.option("--no-project-header", is_flag=True, help="Ignore the client's project header.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON (with the secret).")
    @settings_options
    def create(settings: Settings, name: str, team: str | None, expires: str | None,
               models: tuple[str, ...], upstreams: tuple[str, ...], labels: tuple[str, ...],
               groups: tuple[str, ...], capabilities: tuple[str, ...], parent: str | None,
               no_project_header: bool,
               as_json: bool) -> None:
        """Issue a key and print its secret, once."""
        spec: dict[str, Any] = {
            "name": name, "team": team, "models": _split(models), "upstreams": _split(upstreams),
            "capabilities": _split(capabilities), "labels": {}}
        if groups:
            spec["groups"] = _split(groups)
        for label in labels:
            key, sep, value = label.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{label!r} is not KEY=VALUE", param_hint="--label")
            spec["labels"][key] = value
        if expires:  # a lifetime (3600, 30d), else an instant
            spec["expires_in" if _is_duration(expires) else "expires_at"] = expires
        if no_project_header:
            spec["allow_project_header"] = False
        if not settings.options("keys", KeysConfig).enabled:
            click.echo("note: [keys] enabled is not set; servers will not accept stored keys "
                       "until it is", err=True)
        issued = _run(settings, lambda service: service.create(spec, parent), create=True)
        _show_issued(issued, as_json)


    @keys_group.command("list")
    @click.option("--all", "show_all", is_flag=True, help="Include revoked and expired keys.")
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
    @wide_option
    @settings_options
    def list_keys(settings: Settings, show_all: bool, as_json: bool, wide: bool) -> None:
        """List keys (never secrets)."""
        records = _run(settings, lambda service: service.list_keys())
        rows = [r.as_dict() for r in records]
        if not show_all:
            rows = [r for r in rows if r["status"] == "active"]
        if as_json:
            _echo_json(rows)
            return
        if not rows:
            click.echo("no keys")
            return
        click.echo(Table([
            Column("ID", "id"), Column("STATUS", "status"),
            Column("PREFIXES", lambda r: ",".join(c["prefix"] for c in r["credentials"])),
            Column("NAME", "name"), Column("TEAM", "team"),
            Column("MODELS", lambda r: ",".join(r["models"]) or "any"),
            Column("EXPIRES", lambda r: r["expires_at"] or "never"),
        ], wide=wide).render(rows))


    @keys_group.command("show")
    @click.argument("key_id")
    @click.option("--json", "as_json", is_flag=True)
    @settings_options
    def show(settings: Settings, key_id: str, as_json: bool) -> None:
        """One key (never its secret)."""
        record = _run(settings, lambda service: service.get(key_id))
        if as_json:
            _echo_json(record.as_dict())
        else:
            _show(record)


    @keys_group.command("revoke")
    @click.argument("key_id")
    @click.option("--json", "as_json", is_flag=True)
    @settings_options
    def revoke(settings: Settings, key_id: str, as_json: bool) -> None:
        """Revoke a key and every key derived from it (refused within a second everywhere)."""
        record = _run(settings, lambda service: service.revoke(key_id))
        if as_json:
            _echo_json(record.as_dict())
        else:
            click.echo(f"revoked {record.id} ({record.name})")


    @keys_group.command("rotate")
    @click.argument("key_id")
    @click.option("--grace", default="0", show_default=True,
                  help="How long the old secret keeps working (e.g. 1h).")
    @click.option("--json", "as_json", is_flag=True)
    @settings_options
    def rotate(settings: Settings, key_id: str, grace: str, as_json: bool) -> None:
        """A new secret for the same key; prints it once."""
        try:
            seconds = parse_duration(grace)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--grace") from None
        issued = _run(settings, lambda service: service.rotate(key_id, seconds))
        _show_issued(issued, as_json)

    return keys_group
