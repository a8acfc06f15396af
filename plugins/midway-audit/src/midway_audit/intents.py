"""Write-ahead intents: a small row per request, committed before the upstream is contacted.

``kill -9`` loses the records still in the writer's queue. An intent (request id, time,
principal, method, path, model, client address) is committed when the first upstream attempt
starts and deleted in the transaction that writes the request's full record. At start-up,
the intents of instances that died (their liveness lock is free) become records of their
own, marked interrupted, appended to the chain: every request that reached an upstream has
exactly one record, even across ``kill -9``.

Intents arriving together are committed as one transaction (group commit): while one batch
commits, the next one gathers, and each request waits for the commit of the batch holding
its intent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from typing import Any

import orjson

from midway import Exchange
from midway_audit.metrics import AuditMetrics
from midway_audit.record import Pending, Row, prepare, redacted_json
from midway_audit.redact import Redactor
from midway_audit.store import Store

log = logging.getLogger("midway.audit")

INTERRUPTED_ERROR = "midway stopped before the request finished"
# The model without parsing a large body on the relay's path: a top-level "model" string
# comes first in what Claude Code and the SDKs send. Escaped quotes inside strings never match.
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_MODEL_WINDOW = 4096

# Every key a record's metadata has (record.capture), for records rebuilt from an intent.
_RECORD_KEYS = ("id", "upstream_request_id", "ts", "principal", "principal_name", "team",
                "principal_kind", "client_address", "method", "path", "model",
                "response_model", "upstream", "upstream_key", "attempts", "status",
                "stop_reason", "error", "error_type", "client_disconnected", "answered_by",
                "streaming", "ttfb_ms", "upstream_ttfb_ms", "total_ms", "usage", "cost_usd",
                "cache", "route", "annotations")


def new_instance() -> int:
    """A random instance number: written on every intent this process holds, so that
    recovery knows whose intents they are (and asks whether that instance still lives)."""
    return secrets.randbelow(2**31 - 1) + 1


def intent_meta(exchange: Exchange) -> dict[str, Any]:
    """What an intent records about a request about to reach the upstream."""
    principal = exchange.principal
    request = exchange.request
    if request.parsed:
        model = exchange.model
    else:
        found = _MODEL.search(request.body, 0, _MODEL_WINDOW)
        model = found.group(1).decode("utf-8", "replace") if found else None
    upstream = exchange.upstream
    return {"id": exchange.id, "ts": exchange.timings.started_at, "principal": principal.id,
            "principal_name": principal.name, "team": principal.team,
            "principal_kind": principal.kind, "client_address": exchange.client_address,
            "method": request.method, "path": request.path_qs, "model": model,
            "upstream": upstream.name if upstream is not None else None,
            "upstream_key": upstream.key_id if upstream is not None else None}


def interrupted_rows(intents: list[str], redactor: Redactor) -> list[Row]:
    """Records for intents whose instance died: what the intent knew, status null, and the
    error saying why (``bodies`` false: they were never captured)."""
    rows = []
    for data in intents:
        meta: dict[str, Any] = dict.fromkeys(_RECORD_KEYS)
        meta.update(orjson.loads(data))
        meta.update(attempts=[], annotations={}, interrupted=True, error=INTERRUPTED_ERROR,
                    error_type="interrupted")
        rows.append(prepare(Pending(meta, [], b"", None, None, None), redactor, 0, False))
    return rows


class IntentLog:
    """Group commit of intents into the store."""

    def __init__(self, store: Store, redactor: Redactor, instance: int,
                 metrics: AuditMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.redactor = redactor
        self.instance = instance
        self.written = 0
        self.failed = 0
        self._gathering: list[tuple[str, float, str]] = []
        self._committed: asyncio.Future[BaseException | None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def add(self, exchange: Exchange) -> None:
        """Commit the intent of ``exchange``; returns once it is durable. A failing store is
        logged and counted, never fails the request: its record is still written after."""
        meta = intent_meta(exchange)
        self._gathering.append((exchange.id, float(meta["ts"]),
                                redacted_json(meta, self.redactor)))
        if self._committed is None:
            self._committed = asyncio.get_running_loop().create_future()
        committed = self._committed
        if self._task is None:
            self._task = asyncio.create_task(self._commit_loop(), name="midway-audit-intents")
        # shielded: a client leaving mid-wait must not cancel the batch's commit
        problem = await asyncio.shield(committed)
        if problem is not None:
            log.warning("audit: could not write ahead the intent of %s (%s: %s)", exchange.id,
                        type(problem).__name__, problem)

    async def _commit_loop(self) -> None:
        try:
            while self._gathering:
                batch, committed = self._gathering, self._committed
                self._gathering, self._committed = [], None
                assert committed is not None
                try:
                    await self.store.intend(self.instance, batch)
                except BaseException as exc:  # the waiters learn of it, whatever it is
                    self.failed += len(batch)
                    if self.metrics is not None:
                        self.metrics.intents.labels("error").inc(len(batch))
                    committed.set_result(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    self.written += len(batch)
                    if self.metrics is not None:
                        self.metrics.intents.labels("ok").inc(len(batch))
                    committed.set_result(None)
        finally:
            self._task = None

    async def drain(self) -> None:
        """Wait for the batch being committed (before the store closes)."""
        while self._task is not None:
            await asyncio.shield(self._task)
