"""``midway audit query|show|tail|verify|export|prune``: reading the trail from the shell."""

from __future__ import annotations

import asyncio
import csv
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, Any, TypeVar

import click
import orjson

from midway.cli import TIME, settings_options
from midway.cliformat import Column, Table, money, scalar, to_json, wide_option
from midway.config import ConfigError, Settings
from midway.timeparse import parse_optional_duration
from midway_audit.chain import verify as verify_chain
from midway_audit.chain import verify_exported
from midway_audit.config import AuditConfig
from midway_audit.stores.queries import Filter, full_record
from midway_audit.stores.store import AuditStore

T = TypeVar("T")

CSV_FIELDS = ("seq", "time", "id", "upstream_request_id", "principal", "team",
              "client_address", "agent_id", "parent_agent_id", "method", "path", "model",
              "upstream", "status", "stop_reason",
              "error", "client_disconnected", "answered_by", "streaming", "ttfb_ms", "total_ms",
              "input_tokens", "output_tokens", "cache_read_input_tokens",
              "cache_creation_input_tokens", "cost_usd", "cache", "prev_hash", "hash")


def _run(settings: Settings, action: Callable[[AuditStore], Awaitable[T]]) -> T:
    try:
        config = settings.options("audit", AuditConfig)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None

    async def main() -> T:
        store = AuditStore(config)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _filter(since: float | None, until: float | None, principal: str | None, model: str | None,
            status: str | None, text: str | None = None) -> Filter:
    try:
        return Filter.build(since, until, principal, model, status, text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _filters(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--since", type=TIME,
                     help="From this time: ISO 8601 (naive = UTC), epoch, or 15m / 2h / 7d ago."),
        click.option("--until", type=TIME, help="Before this time (same forms as --since)."),
        click.option("--principal", help="Only this principal id."),
        click.option("--model", help="Only this model (as requested)."),
        click.option("--status", help="A status (200), a class (4xx) or 'error'."),
    ]):
        fn = option(fn)
    return fn


@click.group("audit")
def audit() -> None:
    """Query, follow, verify and export the audit trail."""


@audit.command("query")
@_filters
@click.option("--text", help="Only records whose metadata or bodies contain this text.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of records.")
@wide_option
@settings_options
def query(settings: Settings, since: float | None, until: float | None, principal: str | None,
          model: str | None, status: str | None, text: str | None, limit: int,
          as_json: bool, wide: bool) -> None:
    """Records, newest first (no bodies: see `show`)."""
    filt = _filter(since, until, principal, model, status, text)
    records = _run(settings, lambda store: store.query(filt, limit))
    if as_json:
        click.echo(to_json(records, indent=False))
        return
    if not records:
        click.echo("no records")
        return
    click.echo(_table(wide).render(records))


def _table(wide: bool) -> Table:
    """The record list: one line per request, 100 columns unless ``wide``."""
    def usage(kind: str) -> Any:
        return lambda r: (r.get("usage") or {}).get(kind)

    # 100 columns hold time, id, principal, model, status and cost (and what else fits, in
    # the order of `drop`); the rest shows with --wide (or in `audit show`).
    first = 0 if wide else 5  # narrow: MM-DD HH:MM:SS
    return Table([
        Column("TIME (UTC)", lambda r: (r.get("time") or "")[first:19].replace("T", " "),
               19 - first, shrink=False),
        Column("REQUEST ID", "id", 30, shrink=False),
        Column("PRINCIPAL", "principal", 12),
        Column("MODEL", "model", 17, shrink=False),
        Column("STATUS", lambda r: str(r.get("status") or "-") +
               ("!" if r.get("client_disconnected") else ""), 6, right=True, shrink=False),
        Column("STOP", "stop_reason", 10, drop=2),
        Column("TTFB ms", "ttfb_ms", 7, right=True, format=_num, drop=1),
        Column("TOTAL ms", "total_ms", 8, right=True, format=_num, drop=6),
        Column("IN", usage("input_tokens"), 7, right=True, drop=4),
        Column("OUT", usage("output_tokens"), 7, right=True, drop=5),
        Column("COST $", "cost_usd", 9, right=True, shrink=False,
               format=lambda v: "-" if v is None else money(v)),
        Column("CACHE", "cache", 6, drop=3),
    ], wide=wide)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"


@audit.command("show")
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@settings_options
def show(settings: Settings, request_id: str, as_json: bool) -> None:
    """One record with its bodies (by midway's request id)."""
    record = _run(settings, lambda store: store.get(request_id))
    if record is None:
        raise click.ClickException(f"no audit record for {request_id}")
    if as_json:
        click.echo(to_json(record))
        return
    request_body = record.pop("request_body", None)
    response_body = record.pop("response_body", None)
    for key in sorted(record):
        click.echo(f"{key:>22}: {scalar(record[key])}")
    for title, body in (("request body", request_body), ("response", response_body)):
        click.echo(f"\n--- {title} ---")
        click.echo(_pretty(body))


def _pretty(body: str | None) -> str:
    if body is None:
        return "(not recorded)"
    try:
        return orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:  # truncated or not JSON: as stored
        return body


@audit.command("tail")
@click.option("-n", "lines", type=int, default=10, show_default=True,
              help="Records to print first.")
@click.option("--interval", type=float, default=1.0, show_default=True,
              help="Seconds between polls.")
@click.option("--count", type=int, default=None, help="Exit after printing this many.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@wide_option
@settings_options
def tail(settings: Settings, lines: int, interval: float, count: int | None,
         as_json: bool, wide: bool) -> None:
    """Follow new records live (Ctrl-C to stop)."""
    table = _table(wide)

    def emit(record: dict[str, Any]) -> None:
        click.echo(to_json(record, indent=False) if as_json else table.line(record))

    async def follow(store: AuditStore) -> None:
        head = await store.head()
        printed = 0
        last = max(head.anchor_seq, head.seq - lines)
        if not as_json:
            click.echo(table.header())
        while count is None or printed < count:
            records = await store.after(last, 500)
            for record in records:
                emit(record)
                printed += 1
                last = record["seq"]
                if count is not None and printed >= count:
                    return
            if not records:
                await asyncio.sleep(interval)

    try:
        _run(settings, follow)
    except KeyboardInterrupt:
        pass


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--jsonl", "jsonl", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Verify these JSONL files (the sink's, or an export), oldest first, "
                   "instead of the store.")
@settings_options
def verify(settings: Settings, as_json: bool, jsonl: tuple[str, ...]) -> None:
    """Check the hash chain; report the first broken link (exit status 1)."""
    started = time.monotonic()
    result = verify_exported(_jsonl_records(jsonl)) if jsonl else _run(settings, verify_chain)
    if as_json:
        click.echo(to_json(result.as_dict(), indent=False))
    elif result.ok:
        click.echo(f"ok: {result.checked} records verified (seq {result.head.anchor_seq + 1}.."
                   f"{result.head.seq}, head {result.head.hash}) in "
                   f"{time.monotonic() - started:.2f} s")
    else:
        where = f"seq {result.broken_seq}"
        if result.broken_request_id:
            where += f" (request {result.broken_request_id})"
        click.echo(f"BROKEN at {where}: {result.reason}; {result.checked} records before it "
                   "are intact", err=True)
    if not result.ok:
        sys.exit(1)


def _jsonl_records(paths: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    yield orjson.loads(line)


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="File to write (default: standard output).")
@click.option("--bodies/--no-bodies", default=True, show_default=True,
              help="Include request and response bodies.")
@_filters
@settings_options
def export(settings: Settings, fmt: str, output: str | None, bodies: bool,
           since: float | None, until: float | None, principal: str | None, model: str | None,
           status: str | None) -> None:
    """Every matching record, oldest first, with its seq and hashes."""
    filt = _filter(since, until, principal, model, status)

    async def dump(store: AuditStore) -> int:
        try:
            writer = csv.DictWriter(fh, [*CSV_FIELDS, *(("request_body", "response_body")
                                                        if bodies else ())],
                                    extrasaction="ignore") if fmt == "csv" else None
            if writer is not None:
                writer.writeheader()
            last, total = 0, 0
            while True:
                rows = await store.scan_filtered(filt, last, 500)
                if not rows:
                    return total
                for row in rows:
                    record = full_record(row)
                    if not bodies:
                        record.pop("request_body")
                        record.pop("response_body")
                    if writer is None:
                        fh.write(orjson.dumps(record).decode() + "\n")
                    else:
                        writer.writerow(_flat(record))
                    last = row.seq
                total += len(rows)
        finally:
            if output:
                fh.close()

    # Opened here, not in the coroutine: a file is opened once, before the loop runs.
    fh: IO[str] = open(output, "w", newline="") if output else sys.stdout  # noqa: SIM115
    total = _run(settings, dump)
    if output:
        click.echo(f"exported {total} records to {output}", err=True)


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    flat = dict(record)
    usage = record.get("usage") or {}
    for key in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                "cache_creation_input_tokens"):
        flat[key] = usage.get(key)
    return flat


@audit.command("prune")
@click.option("--max-age", help="Delete records older than this (e.g. 90d).")
@click.option("--max-rows", type=int, help="Keep at most this many records.")
@settings_options
def prune(settings: Settings, max_age: str | None, max_rows: int | None) -> None:
    """Delete the oldest records now; the chain stays verifiable from its new anchor."""
    try:
        age = parse_optional_duration(max_age)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    if age is None and max_rows is None:
        raise click.UsageError("give --max-age and/or --max-rows")
    deleted = _run(settings, lambda store: store.prune(age, max_rows))
    click.echo(f"pruned {deleted} records")
