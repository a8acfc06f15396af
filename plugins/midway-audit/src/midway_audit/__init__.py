"""midway-audit: one tamper-evident record of every request, in SQLite, PostgreSQL or JSONL.

The relay's part is small: ``upstream_request`` (first attempt) hands the writer process an
intent, ``post_response`` (last, so billing's cost and the cache's outcome are known) hands it
the record — metadata as JSON, bodies as the bytes already in hand (streams kept by the core,
``Midway.keep_stream_bodies``). The writer process (handoff/writer_process.py) reassembles, redacts,
chains and commits; ``pre_request`` holds new requests back while it is far behind.

The package: :mod:`midway_audit.handoff` (relay → writer process) writes through
:mod:`midway_audit.stores` (the store); both build on the record's modules (``record``,
``chain``, ``parts``, ``redact``, ``config``), which import neither.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from midway import Attempt, Exchange, Midway, hookimpl
from midway.access import local_or_admin
from midway.errors import error_response
from midway.services import ServiceKey
from midway.storage import new_instance
from midway.timeparse import format_duration
from midway_audit.config import AuditConfig
from midway_audit.handoff.channel import WriterChannel
from midway_audit.handoff.intents import intent_meta
from midway_audit.metrics import AuditMetrics
from midway_audit.operations import config_check, db_upgrade  # noqa: F401 (hooks)
from midway_audit.record import capture
from midway_audit.refusals import RefusalLimit
from midway_audit.service import AUDIT, AuditService
from midway_audit.stores.store import AuditStore

if TYPE_CHECKING:
    import click

__version__ = "0.1.0"
__all__ = ["AUDIT", "AuditConfig", "AuditService"]
log = logging.getLogger("midway.audit")

# Streams are kept raw (SSE framing around the deltas): room for a body of max_body_bytes.
_STREAM_OVERHEAD = 4


# The metrics live as long as the registry they are on: built once, before startup, and kept
# across a shutdown and a new startup (they cannot be registered twice).
_METRICS: ServiceKey[AuditMetrics] = ServiceKey("audit.metrics")


@hookimpl
def register_metrics(midway: Midway) -> None:
    if midway.metrics is not None:
        midway.services[_METRICS] = AuditMetrics(midway.metrics.registry)


@hookimpl
async def startup(midway: Midway) -> None:
    config = midway.options("audit", AuditConfig)  # a bad [audit] table stops start-up
    # The relay owns its requests in flight: it claims the instance number its writer
    # process writes intents under (the writer claims it too), so that only the death of
    # both lets recovery record them as interrupted.
    instance = new_instance()
    store = AuditStore(config)
    channel = WriterChannel(config, midway.settings.tables.get("audit"), midway.data_dir,
                            midway.services.get(_METRICS), instance)
    try:
        await store.open()
        if config.write_ahead:
            await store.claim(instance)
        await channel.start()
    except BaseException:
        await channel.close()
        await store.close()
        raise
    if config.bodies:
        midway.keep_stream_bodies(config.max_body_bytes * _STREAM_OVERHEAD)
    midway.services[AUDIT] = AuditService(store, channel,
                                          RefusalLimit(config.refused_per_minute))
    log.info("audit: recording to %s (bodies %s, writer process %s)", config.describe_store(),
             "on" if config.bodies else "off", channel.proc.pid if channel.proc else None)


@hookimpl
def describe(midway: Midway) -> str:
    config = midway.options("audit", AuditConfig)
    bodies = "prompts and answers" if config.bodies else "metadata only ([audit] bodies off)"
    limits = [f"{format_duration(config.max_age)}" if config.max_age else "",
              f"{config.max_rows} records" if config.max_rows else ""]
    kept = " or ".join(x for x in limits if x)
    body_age = (f"; bodies deleted after {format_duration(config.body_max_age)}"
                if config.bodies and config.body_max_age else "")
    return (f"records every request ({bodies}) to {config.describe_store()}, kept "
            + (f"up to {kept}" if kept else "without a limit ([audit] max_age)") + body_age)


@hookimpl
async def shutdown(midway: Midway) -> None:
    service = midway.services.pop(AUDIT, None)  # the request hooks stop here
    if service is None:
        return
    if service.writer is not None:
        await service.writer.close()
    await service.store.close()


@hookimpl
async def check_ready(midway: Midway) -> list[str] | None:
    service = midway.services.get(AUDIT)
    if service is None:
        return None
    problems = []
    proc = service.writer.proc if service.writer is not None else None
    if proc is not None and proc.returncode is not None:
        problems.append(f"the writer process exited with {proc.returncode} (restarting)")
    problem = await service.store.db.ping()
    if problem:
        problems.append(problem)
    return problems


# The request hooks find the channel in midway.services (a plain dict): they run for every
# request, so each costs the relay as little as it can.

@hookimpl(tryfirst=True)
def pre_request(exchange: Exchange) -> Any:
    midway = exchange.midway
    service = midway.services.get(AUDIT) if midway is not None else None
    channel = service.writer if service is not None else None
    # The writer is far behind: wait for it (with on_full = "drop", records are dropped
    # instead and requests never wait).
    if channel is not None and channel.blocking and channel.over():
        return channel.room()
    return None


@hookimpl
def upstream_request(exchange: Exchange, attempt: Attempt) -> Any:
    midway = exchange.midway
    if attempt.number != 1 or midway is None:  # one intent per request: retries share it
        return None
    service = midway.services.get(AUDIT)
    channel = service.writer if service is not None else None
    if channel is None or not channel.config.write_ahead:
        return None
    return channel.intent(exchange.id, intent_meta(exchange))


@hookimpl(trylast=True)
def post_response(exchange: Exchange) -> None:
    midway = exchange.midway
    service = midway.services.get(AUDIT) if midway is not None else None
    if service is None or service.writer is None:
        return
    channel = service.writer
    if exchange.unauthenticated and not exchange.attempts and \
            not service.refusals.admit(exchange.client_address, exchange.timings.started_at):
        # Refused before any upstream contact (so no write-ahead intent waits for it).
        if channel.metrics is not None:
            channel.metrics.dropped.labels("refused_rate_limited").inc()
        return
    channel.record(*capture(exchange, channel.config.bodies))


@hookimpl
def register_routes(app: web.Application, midway: Midway) -> None:
    async def status(request: web.Request) -> web.Response:
        if not local_or_admin(request, midway):
            return error_response(403, "audit status is served to local clients or with the "
                                  "admin key")
        service = midway.services.get(AUDIT)
        return web.json_response(service.status() if service is not None else {})

    app.router.add_get("/_midway/audit/status", status)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from midway_audit.commands import audit
    from midway_audit.replay.command import replay

    cli.add_command(audit)
    cli.add_command(replay)  # top level: `midway replay SESSION` (docs/replay.md)
