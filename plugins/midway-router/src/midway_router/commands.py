"""``midway router status [--json]``."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import click

from midway.cli import settings_options
from midway.cliformat import to_json, wide_option
from midway.config import ConfigError, Settings
from midway.secrets_ref import resolve
from midway_router import status as snapshots
from midway_router.routes import PATH
from midway_router.settings import RouterSettings


@click.group("router")
def router_group() -> None:
    """Routing, pooled keys and fallbacks."""


@router_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--url", default=None,
              help="Ask a running server (e.g. http://127.0.0.1:8910) instead of reading the "
                   "snapshots it publishes.")
@wide_option
@settings_options
def status_command(as_json: bool, url: str | None, wide: bool, settings: Settings) -> None:
    """Every upstream and key (by fingerprint): health, resting until, remaining, in flight."""
    running, rows = asyncio.run(_rows(settings, url))
    if as_json:
        click.echo(to_json(rows))
    elif not running:
        click.echo("no router status found: is a midway server with the router running? "
                   f"(looked in {settings.data_dir})", err=True)
    elif not rows:
        click.echo("no upstreams configured; the router is passing requests through "
                   "(add [[router.upstreams]] to route)")
    else:
        click.echo(snapshots.table(rows, wide=wide))


async def _rows(settings: Settings, url: str | None) -> tuple[bool, list[dict[str, Any]]]:
    """Whether a running router answered or published, and its rows."""
    if url:
        headers = {"x-api-key": resolve(settings.admin_key)} if settings.admin_key else {}
        async with aiohttp.ClientSession() as session, \
                session.get(url.rstrip("/") + PATH, headers=headers) as resp:
            if resp.status != 200:
                raise click.ClickException(f"{url} answered {resp.status}")
            rows: list[dict[str, Any]] = await resp.json()
            return True, rows
    try:
        config = settings.options("router", RouterSettings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if config.state:
        found = await snapshots.read_redis(config.state, config.state_prefix)
    else:
        found = snapshots.read_files(settings.data_dir)
    return bool(found), snapshots.merge(found)
