"""``midway sessions list | revoke``: who is signed in, and ending a person's sessions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from midway.cli import settings_options
from midway.cliformat import to_json
from midway.config import ConfigError, Settings
from midway.storage import stores_created
from midway_identity.config import IdentityConfig
from midway_identity.store import IdentityStore

T = TypeVar("T")


@click.group("sessions")
def sessions_group() -> None:
    """Sign-ins through the identity provider ([identity]): list and revoke."""


def _run(settings: Settings, job: Callable[[IdentityStore], Awaitable[T]]) -> T:
    try:
        config = settings.options("identity", IdentityConfig)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not config.enabled:
        raise click.ClickException("sign-in is off: [identity] issuer is not set")

    async def main() -> T:
        store = IdentityStore(config.store, config.schema)
        await store.open()
        try:
            return await job(store)
        finally:
            await store.close()

    with stores_created(False):
        try:
            return asyncio.run(main())
        except Exception as exc:
            if type(exc).__name__ == "StoreMissing":
                raise click.ClickException("no sign-in store yet: nobody has signed in"
                                           ) from None
            raise


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


@sessions_group.command("list")
@click.argument("person", required=False)
@click.option("--all", "show_all", is_flag=True, help="Include revoked and expired sessions.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
def list_command(settings: Settings, person: str | None, show_all: bool,
                 as_json: bool) -> None:
    """Signed-in sessions (of PERSON: an e-mail, IdP subject or person id), newest first."""
    found = _run(settings, lambda s: s.sessions(person, active_only=not show_all))
    rows: list[dict[str, Any]] = [s.as_dict() for s in found]
    if as_json:
        click.echo(to_json(rows))
        return
    if not rows:
        click.echo("no sessions")
        return
    click.echo(f"{'session':<24} {'status':<8} {'person':<32} {'groups':<24} "
               f"{'signed in':<17} {'until':<17}")
    for r in rows:
        who = r["email"] or r["subject"]
        click.echo(f"{r['id']:<24} {r['status']:<8} {who[:32]:<32} "
                   f"{','.join(r['groups'])[:24]:<24} {_when(r['created_at']):<17} "
                   f"{_when(r['expires_at']):<17}")


@sessions_group.command("revoke")
@click.argument("person")
@click.option("--reason", default="revoked by an administrator", show_default=True,
              help="Recorded with the session.")
@settings_options
def revoke_command(settings: Settings, person: str, reason: str) -> None:
    """End every session of PERSON (an e-mail, IdP subject or person id; or one session
    id): their access and refresh tokens stop working on every instance at once."""
    async def job(store: IdentityStore) -> int:
        sessions = await store.sessions(person, active_only=False)
        return await store.revoke([s.id for s in sessions if s.revoked_at is None], reason)

    count = _run(settings, job)
    click.echo(f"revoked {count} session(s) of {person}")
