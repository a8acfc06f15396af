"""Write-ahead intents: a small row per request, committed while the upstream is contacted.

``kill -9`` loses the records still queued. The relay hands the writer process an intent
(request id, time, principal, method, path, model, client address) when the first upstream
attempt starts; the writer commits it (group commit: intents arriving together go in one
transaction — the next records' transaction when one comes before ``batch_linger`` is up) and
deletes it in the transaction that writes the request's full record.

Intents left open when the relay's stream ends (the relay was killed) become records of their
own, marked interrupted, written by that writer before it exits; if the writer died too, the
next instance to start writes them (the dead writer's liveness lock is free): every request
that reached an upstream has exactly one record. With ``write_ahead = "durable"`` the relay
also waits for the intent's commit before it sends the request upstream.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

import attrs
import orjson

from midway.exchange import Exchange
from midway.storage import Episode
from midway_audit.record import Pending, Row, join_query, prepare, redacted_json
from midway_audit.redact import Redactor
from midway_audit.stores.store import AuditStore

log = logging.getLogger("midway.audit")

INTERRUPTED_ERROR = "midway stopped before the request finished"
# The model without parsing a large body on the relay's path: a top-level "model" string
# comes first in what Claude Code and the SDKs send. Escaped quotes inside strings never match.
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_MODEL_WINDOW = 4096

# Every key a record's metadata has (record.capture), for records rebuilt from an intent.
_RECORD_KEYS = ("id", "upstream_request_id", "ts", "principal", "principal_name", "team",
                "principal_kind", "client_address", "agent_id", "parent_agent_id", "method",
                "path", "model", "response_model", "upstream", "upstream_key", "attempts", "status",
                "stop_reason", "error", "error_type", "client_disconnected", "answered_by",
                "streaming", "ttfb_ms", "upstream_ttfb_ms", "total_ms", "usage", "cost_usd",
                "cache", "route", "annotations")


# An intent frame's metadata is a JSON array in this order (see record.CAPTURED).
INTENDED = ("id", "ts", "principal", "principal_name", "team", "principal_kind",
            "client_address", "agent_id", "parent_agent_id", "method", "path", "query", "model",
            "upstream", "upstream_key")


def intent_meta(exchange: Exchange) -> bytes:
    """What an intent records about a request about to reach the upstream (on the relay's
    path: read, encode, nothing more)."""
    principal = exchange.principal
    request = exchange.request
    if request.parsed:
        model = exchange.model
    else:
        found = _MODEL.search(request.body, 0, _MODEL_WINDOW)
        model = found.group(1).decode("utf-8", "replace") if found else None
    upstream = exchange.upstream
    return orjson.dumps((
        exchange.id, exchange.timings.started_at, principal.id, principal.name, principal.team,
        principal.kind, exchange.client_address, exchange.agent_id, exchange.parent_agent_id,
        request.method, request.path,
        request.query_string, model, upstream.name if upstream is not None else None,
        upstream.key_id if upstream is not None else None))


def intended(data: bytes) -> dict[str, Any]:
    """An intent frame's metadata, read by the writer process."""
    meta = dict(zip(INTENDED, orjson.loads(data), strict=True))
    join_query(meta)
    return meta


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


@attrs.define(slots=True)
class Carried:
    """Intents taken to be written: every one taken (``batch``: request id, frame data, the
    frame's end in the ring) and the rows of those whose record had not come (``rows``)."""

    batch: list[tuple[str, bytes, int]]
    rows: list[tuple[str, float, str]]


class IntentLog:
    """Group commit of intents into the store, in the order they arrived."""

    def __init__(self, store: AuditStore, redactor: Redactor, instance: int,
                 metrics: Any = None, on_commit: Callable[[], None] | None = None,
                 linger: float = 0.0) -> None:
        self.store = store
        self.metrics = metrics
        self.redactor = redactor
        self.instance = instance
        self.on_commit = on_commit
        # Most requests end within milliseconds: an intent whose record comes while it
        # lingers is never written. (The relay's death is covered meanwhile: the intent is
        # in this process; only a kill of both loses what lingers.)
        self.linger = linger
        self.written = 0
        self.failed = 0
        self.done = 0  # intents handled (committed, failed, or no longer needed), in order
        self.open: dict[str, bytes] = {}  # request id -> intent frame data, until its record
        self._gathering: list[tuple[str, bytes, int]] = []  # with their ring frame's end
        # the request ids in _gathering whose intent no earlier writer may have committed
        self._fresh: set[str] = set()
        self.done_end = 0  # where the frame of the last intent handled ends in the ring
        self._settled: set[str] = set()  # gathered intents whose record already came
        self._task: asyncio.Task[None] | None = None
        self._committing: asyncio.Future[None] | None = None
        # set while a records' transaction carries intents (``carry``) until it is over
        self._carrying: asyncio.Future[None] | None = None
        self._outage = Episode(log, "audit: writing intents ahead")

    @property
    def busy(self) -> bool:
        """Whether intents taken are not handled yet."""
        return self._task is not None or self._carrying is not None

    def add(self, request_id: str, data: bytes, ring_end: int = 0, replay: bool = False
            ) -> None:
        """Take the intent of a request about to reach the upstream (its frame's metadata,
        parsed only if it has to be written); commit it soon. ``replay``: read again after a
        writer was killed, which may have committed it."""
        self.open[request_id] = data
        self._gathering.append((request_id, data, ring_end))
        if not replay:
            self._fresh.add(request_id)
        if self._task is None:
            self._task = asyncio.create_task(self._commit_loop(), name="midway-audit-intents")

    def settle(self, request_id: str) -> bool:
        """The request's record came: its intent is no longer open (nor written, if it was
        still waiting for its batch). Whether the intent may be in the store: ``False`` when
        it never will be — then nothing in the store can name the request yet (no intent to
        delete, no interrupted record made from one), and the record's transaction skips
        both lookups."""
        if self.open.pop(request_id, None) is None:
            return True  # not this writer's (a killed one's, committed or not): assume so
        if self._gathering:
            self._settled.add(request_id)
        return request_id not in self._fresh

    def _take(self) -> Carried:
        """The intents gathered so far, and the rows of those still open (to be written)."""
        batch, settled = self._gathering, self._settled
        self._gathering, self._settled, self._fresh = [], set(), set()
        return Carried(batch, [_row(rid, intended(data), self.redactor)
                               for rid, data, _ in batch if rid not in settled])

    async def _commit_loop(self) -> None:
        try:
            while self._gathering:
                if self.linger:
                    await asyncio.sleep(self.linger)
                if self._carrying is not None:  # earlier intents first: ``done`` is in order
                    await asyncio.wait([self._carrying])
                if not self._gathering:  # a records' transaction carried them all
                    break
                await self._commit(self._take())
        finally:
            self._task = None

    async def _commit(self, taken: Carried) -> None:
        """Commit intents in a transaction of their own."""
        try:
            if taken.rows:
                self._committing = asyncio.ensure_future(
                    self.store.intend(self.instance, taken.rows))
                await self._committing
        except Exception as exc:  # the record is still written after: log, count
            self._handled(taken, exc)
        else:
            self._handled(taken)
        finally:
            self._committing = None

    def _handled(self, taken: Carried, exc: Exception | None = None) -> None:
        count = len(taken.rows)
        if exc is not None:
            self.failed += count
            if self.metrics is not None:
                self.metrics.intents.labels("error").inc(count)
            self._outage.failed(exc, "their records are still written after")
        else:
            self._outage.ok()
            self.written += count
            if self.metrics is not None and count:
                self.metrics.intents.labels("ok").inc(count)
        self.done += len(taken.batch)
        self.done_end = max(self.done_end, taken.batch[-1][2])
        if self.on_commit is not None:
            self.on_commit()

    def carry(self) -> Carried | None:
        """Hand the intents gathered so far (waiting for ``linger`` to end) to a records'
        transaction about to run, instead of a transaction of their own after the linger:
        never later than they would be written alone, one commit less. Call ``carried``
        once that transaction is over. Not on PostgreSQL: there a commit of their own may
        run beside a records' transaction (another connection), and could end before it."""
        if not self._gathering or self._committing is not None or self.store.postgres:
            return None  # none, or a commit of their own is under way (its turn first)
        self._carrying = asyncio.get_running_loop().create_future()
        return self._take()

    async def carried(self, taken: Carried, committed: bool) -> None:
        """The records' transaction that carried ``taken`` is over. Not ``committed``: the
        intents are written in a transaction of their own, as they would have been."""
        try:
            if committed:
                self._handled(taken)
            else:
                await self._commit(taken)
        finally:
            assert self._carrying is not None
            self._carrying.set_result(None)
            self._carrying = None

    async def drain(self) -> None:
        """Wait until every intent taken so far is committed."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def quiet(self) -> None:
        """Wait for the commit in progress, if any: a record's transaction, which deletes its
        intent, must not run beside the transaction inserting it (PostgreSQL pools)."""
        committing = self._committing
        if committing is not None:
            await asyncio.wait([committing])

    def interrupted(self) -> list[Row]:
        """Records for the intents still open: their requests never finished."""
        rows = interrupted_rows([redacted_json(intended(data), self.redactor)[0]
                                 for data in self.open.values()], self.redactor)
        self.open.clear()
        return rows


def _row(request_id: str, meta: dict[str, Any], redactor: Redactor) -> tuple[str, float, str]:
    return request_id, float(meta["ts"]), redacted_json(meta, redactor)[0]
