"""midway-audit: one tamper-evident record of every request, in SQLite, PostgreSQL or JSONL.

Hooks: ``upstream_request`` (first attempt) commits a write-ahead intent, ``on_chunk``
rebuilds streamed answers, ``post_response`` (last, so billing's cost and the cache's outcome
are known) queues the record, a batch writer commits it (and deletes the intent). At
start-up, the intents of dead instances become records marked interrupted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import attrs
from aiohttp import web

from midway import Attempt, Exchange, Midway, SSEEvent, hookimpl
from midway.access import local_or_admin
from midway.errors import error_response
from midway_audit.assemble import EventLog
from midway_audit.config import AuditConfig
from midway_audit.intents import IntentLog, interrupted_rows, new_instance
from midway_audit.jsonl_sink import JsonlSink
from midway_audit.metrics import AuditMetrics
from midway_audit.operations import config_check, db_upgrade  # noqa: F401 (hooks)
from midway_audit.record import capture
from midway_audit.redact import Redactor
from midway_audit.service import AuditService
from midway_audit.store import Store, open_store
from midway_audit.writer import AuditWriter

if TYPE_CHECKING:
    import click

__version__ = "0.1.0"
log = logging.getLogger("midway.audit")

_STATE = "audit"  # exchange.state key: the stream's assembler, or False when not assembling


@attrs.define
class _Instance:
    """The plugin's state in one running midway (tests run several in one process)."""

    metrics: AuditMetrics | None = None
    config: AuditConfig | None = None
    store: Store | None = None
    writer: AuditWriter | None = None
    intents: IntentLog | None = None


_instances: WeakKeyDictionary[Midway, _Instance] = WeakKeyDictionary()


def _instance(midway: Midway) -> _Instance:
    found = _instances.get(midway)
    if found is None:
        found = _instances[midway] = _Instance()
    return found


@hookimpl
def register_metrics(midway: Midway) -> None:
    if midway.metrics is not None:
        _instance(midway).metrics = AuditMetrics(midway.metrics.registry)


@hookimpl
async def startup(midway: Midway) -> None:
    inst = _instance(midway)
    config = AuditConfig.from_table(midway.config("audit"), midway.data_dir)
    redactor = Redactor(config.redact_defaults, config.redact_patterns, config.redact_headers)
    store = open_store(config, midway.data_dir)
    await store.open()
    instance = new_instance()
    if config.write_ahead:
        await store.claim(instance)
    recovered = await store.recover(instance, lambda found: interrupted_rows(found, redactor))
    if recovered:
        log.warning("audit: recorded %d requests interrupted by a stopped instance", recovered)
    if inst.metrics is not None:
        inst.metrics.recovered.inc(recovered)
    sink = None
    if config.jsonl is not None:
        sink = JsonlSink(config.jsonl, config.jsonl_max_bytes, config.jsonl_backups)
        sink.open()
    writer = AuditWriter(store, config, redactor, inst.metrics, sink)
    await writer.start()
    inst.config, inst.store, inst.writer = config, store, writer
    inst.intents = IntentLog(store, redactor, instance, inst.metrics) \
        if config.write_ahead else None
    midway.services["audit"] = AuditService(store, writer)
    log.info("audit: recording to %s (bodies %s)", config.describe_store(),
             "on" if config.bodies else "off")


@hookimpl
async def shutdown(midway: Midway) -> None:
    inst = _instances.get(midway)
    if inst is None or inst.writer is None or inst.store is None:
        return
    if inst.intents is not None:
        await inst.intents.drain()
    await inst.writer.stop()
    await inst.store.close()
    inst.writer = inst.store = inst.intents = None


@hookimpl
async def upstream_request(exchange: Exchange, attempt: Attempt) -> None:
    if attempt.number != 1:  # one intent per request: retries share it
        return
    inst = _instances.get(exchange.midway) if exchange.midway is not None else None
    if inst is not None and inst.intents is not None:
        await inst.intents.add(exchange)


@hookimpl
def on_chunk(exchange: Exchange, event: SSEEvent) -> None:
    log_ = exchange.state.get(_STATE)
    if log_ is None:
        inst = _instances.get(exchange.midway) if exchange.midway is not None else None
        config = inst.config if inst is not None else None
        if config is None or not config.bodies:
            exchange.state[_STATE] = False
            return
        log_ = exchange.state[_STATE] = EventLog(config.max_body_bytes)
    elif log_ is False or event.name == "ping":
        return
    log_.add(event.name, event.data)


@hookimpl(trylast=True)
async def post_response(exchange: Exchange) -> None:
    inst = _instances.get(exchange.midway) if exchange.midway is not None else None
    if inst is None or inst.writer is None or inst.config is None:
        return
    events = exchange.state.get(_STATE)
    await inst.writer.submit(capture(exchange, inst.config.bodies,
                                     events if isinstance(events, EventLog) else None))


@hookimpl
def register_routes(app: web.Application, midway: Midway) -> None:
    async def status(request: web.Request) -> web.Response:
        if not local_or_admin(request, midway):
            return error_response(403, "audit status is served to local clients or with the "
                                  "admin key")
        inst = _instances.get(midway)
        body: dict[str, Any] = inst.writer.status() if inst and inst.writer else {}
        return web.json_response(body)

    app.router.add_get("/_midway/audit/status", status)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from midway_audit.commands import audit

    cli.add_command(audit)
