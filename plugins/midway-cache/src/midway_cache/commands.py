"""``midway cache stats | clear | eval``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import attrs
import click

from midway.cli import settings_options
from midway.cliformat import money, to_json
from midway.config import ConfigError, Settings
from midway_cache.config import CacheConfig
from midway_cache.extras import require, semantic_modules
from midway_cache.stores import make_store


@click.group("cache")
def cache_group() -> None:
    """Inspect and manage the response cache."""


def _config(settings: Settings) -> CacheConfig:
    try:
        return settings.options("cache", CacheConfig)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _store(settings: Settings) -> Any:
    try:
        return make_store(_config(settings))
    except ConfigError as exc:  # e.g. a Redis store without the redis extra
        raise click.ClickException(str(exc)) from None


async def _with_store(settings: Settings, job: Any) -> Any:
    store = _store(settings)
    await store.open()
    try:
        return await job(store)
    finally:
        await store.close()


@cache_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@settings_options
def stats_command(settings: Settings, as_json: bool) -> None:
    """Entries, bytes, hits, misses, saved tokens and dollars."""
    stats = asyncio.run(_with_store(settings, lambda store: store.stats()))
    if as_json:
        click.echo(to_json(stats))
        return
    lookups = stats["hits"] + stats["semantic_hits"] + stats["misses"]
    rate = (stats["hits"] + stats["semantic_hits"]) / lookups if lookups else 0.0
    click.echo(f"entries       {stats['entries']}")
    click.echo(f"bytes         {stats['bytes']}")
    click.echo(f"hits          {stats['hits']} exact, {stats['semantic_hits']} semantic "
               f"({rate:.1%} of lookups)")
    click.echo(f"misses        {stats['misses']}")
    click.echo(f"shadow hits   {stats['shadow_hits']}")
    click.echo(f"bypasses      {stats['bypasses']}")
    click.echo(f"saved tokens  {stats['saved_tokens']}")
    click.echo(f"saved usd     {money(stats['saved_usd'])}")


@cache_group.command("clear")
@click.option("--principal", default=None, help="Only this principal's entries.")
@click.option("--team", default=None, help="Only this team's entries (share = \"team\").")
@settings_options
def clear_command(settings: Settings, principal: str | None, team: str | None) -> None:
    """Delete cached answers: all of them, or one principal's or team's."""
    if principal and team:
        raise click.UsageError("give --principal or --team, not both")
    tenant = f"principal:{principal}" if principal else f"team:{team}" if team else None
    deleted = asyncio.run(_with_store(settings, lambda store: store.clear(tenant)))
    click.echo(f"deleted {deleted} entries")


@cache_group.command("eval")
@click.option("--pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Labelled pairs (JSON); default: the built-in set.")
@click.option("--threshold", type=float, default=None,
              help="Similarity threshold [semantic_threshold from the config].")
@click.option("--no-guard", is_flag=True, help="Measure without the lexical guard.")
@click.option("--no-verifier", is_flag=True, help="Measure without the verifier.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--verbose", "-v", is_flag=True, help="Print every pair.")
@settings_options
def eval_command(settings: Settings, pairs: Path | None, threshold: float | None,
                 no_guard: bool, no_verifier: bool, as_json: bool, verbose: bool) -> None:
    """Served-rate and wrong-rate of the semantic layer on labelled prompt pairs."""
    config = _config(settings)
    try:
        require("midway cache eval", semantic_modules(config))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    from midway_cache.evaluate import evaluate, load_pairs, render

    if threshold is not None:
        config = attrs.evolve(config, semantic_threshold=threshold)
    if no_guard:
        config = attrs.evolve(config, semantic_guard=False)
    if no_verifier:
        config = attrs.evolve(config, semantic_verifier=False)
    report = asyncio.run(evaluate(config, load_pairs(pairs)))
    if as_json:
        click.echo(to_json(report))
    else:
        click.echo(render(report, verbose))
