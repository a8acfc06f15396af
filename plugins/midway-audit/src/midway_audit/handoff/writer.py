"""The bounded queue in the writer process, and the batch writer behind it.

Records read from the relay are queued; when the queue is full (``queue_size`` records or
``queue_max_bytes``), the writer stops reading until there is room, and the ring fills up
(see channel.py: backpressure or counted drops). The writer takes everything queued (up to
``batch_size``), prepares it and commits it as one transaction; a failing store is retried
with backoff, so records queue up rather than vanish. ``stop`` drains the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from midway.background import start_every
from midway.storage import Episode
from midway_audit.chain import Head
from midway_audit.config import AuditConfig
from midway_audit.handoff.intents import IntentLog
from midway_audit.jsonl_sink import JsonlSink
from midway_audit.record import Pending, Row, plain_pending, prepare
from midway_audit.redact import Redactor
from midway_audit.stores.store import AuditStore

log = logging.getLogger("midway.audit")


class AuditWriter:
    def __init__(self, store: AuditStore, config: AuditConfig, redactor: Redactor,
                 metrics: Any = None, sink: JsonlSink | None = None,
                 intents: IntentLog | None = None,
                 on_commit: Callable[[], None] | None = None) -> None:
        self.store = store
        self.intents = intents
        self.on_commit = on_commit
        self.config = config
        self.redactor = redactor
        self.metrics = metrics
        self.sink = sink
        self.queue: asyncio.Queue[Pending | None] = asyncio.Queue(config.queue_size)
        self.committed = Head()  # the chain head after this writer's last commit
        self.written = 0
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._bodies_after = 0  # where the last body sweep stopped
        self._stopping = False
        self._deadline = 0.0
        self._bytes = 0  # what the queued records hold (Pending.size)
        self._room = asyncio.Event()
        self._outage = Episode(log, "audit: writing records")  # one log line per outage
        # Records queued or being written, and where the frame of the last one written ends
        # in the hand-off ring: the ring's room is given back only up to there.
        self.unwritten = 0
        self.done_end = 0

    async def start(self) -> None:
        self.committed = await self.store.head()
        self._task = asyncio.create_task(self._run(), name="midway-audit-writer")
        if self.config.max_age is not None or self.config.max_rows is not None or \
                self.config.body_max_age is not None:
            self._prune_task = start_every(self.config.prune_interval, self._prune, first=0,
                                           name="audit: pruning", log=log)

    def offer(self, pending: Pending) -> bool:
        """Queue a record at once when there is room (or drop it, in drop mode); ``False``
        when it has to wait for room (then ``submit`` it)."""
        if self._stopping:
            self._drop("closed")
            return True
        size = pending.size
        if self.queue.full() or self._over(size):
            if self.config.on_full != "drop":
                return False
            self._drop("queue_full")
            return True
        self.queue.put_nowait(pending)
        self.unwritten += 1
        self._bytes += size
        return True

    async def submit(self, pending: Pending) -> None:
        if self.offer(pending):
            return
        # backpressure: wait for room (records, then bytes); the gauge shows the full queue
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.queue.qsize())
        size = pending.size
        while self._over(size):
            self._room.clear()
            await self._room.wait()
        await self.queue.put(pending)
        self.unwritten += 1
        self._bytes += size
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.queue.qsize())

    def _over(self, size: int) -> bool:
        """Whether ``size`` more bytes would overflow the queue (one record always fits)."""
        return self._bytes > 0 and self._bytes + size > self.config.queue_max_bytes

    def _taken(self, batch: list[Pending]) -> None:
        self._bytes -= sum(p.size for p in batch)
        self._room.set()

    def _drop(self, reason: str, count: int = 1) -> None:
        self.dropped += count
        if self.metrics is not None:
            self.metrics.dropped.labels(reason).inc(count)

    async def stop(self) -> None:
        """Write everything queued, then stop (a failing store is retried until
        ``flush_timeout``)."""
        if self._prune_task is not None:
            self._prune_task.cancel()
        if self._task is None:
            return
        self._stopping = True
        self._deadline = time.monotonic() + self.config.flush_timeout
        await self.queue.put(None)
        await self._task
        self._task = None
        if self.sink is not None:
            self.sink.close()

    async def _run(self) -> None:
        queue = self.queue
        limit = self.config.batch_size
        done = False
        while not done:
            item = await queue.get()
            if item is None:
                break
            # Records come in bursts, one per wake-up from the relay (every batch_linger):
            # a burst is a batch.
            batch = [item]
            while len(batch) < limit and not queue.empty():
                item = queue.get_nowait()
                if item is None:
                    done = True
                    break
                batch.append(item)
            self._taken(batch)
            try:
                await self._write(batch)
            except Exception:  # never let the writer die: that would block every request
                log.exception("audit: could not write a batch of %d records", len(batch))
                self._drop("error", len(batch))
            self.unwritten -= len(batch)
            self.done_end = max(self.done_end, batch[-1].ring_end)
            if self.metrics is not None:
                self.metrics.queue_depth.set(queue.qsize())

    async def _write(self, batch: list[Pending]) -> None:
        started = time.monotonic()
        # Nothing else waits on the writer process's loop: no thread to hand over to.
        rows = self._prepare(batch)
        delay = 0.05
        # records read again after a writer was killed may be stored already: skip those
        retrying = any(p.replay for p in batch)
        intents = self.intents
        while True:
            carried = None
            try:
                if intents is not None:
                    await intents.quiet()
                    # the intents waiting for their linger to end go in this transaction
                    carried = intents.carry()
                if carried is None:
                    head = await self.store.append(rows, retrying)
                else:
                    assert intents is not None
                    head = await self.store.append(rows, retrying, carried.rows,
                                                   intents.instance)
                break
            except Exception as exc:
                if carried is not None:
                    assert intents is not None
                    await intents.carried(carried, committed=False)
                if self.metrics is not None:
                    self.metrics.write_errors.inc()
                if self._stopping and time.monotonic() > self._deadline:
                    log.error("audit: store still failing at shutdown (%s); %d records lost",
                              type(exc).__name__, len(rows))
                    self._drop("store_failed", len(rows))
                    return
                self._outage.failed(exc, "retrying with backoff; records queue up meanwhile")
                retrying = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if carried is not None:
            assert intents is not None
            await intents.carried(carried, committed=True)
        self._outage.ok()
        self.committed = head
        self.written += len(rows)
        if self.on_commit is not None:
            self.on_commit()
        if self.metrics is not None:
            self.metrics.written.inc(len(rows))
            self.metrics.batch_seconds.observe(time.monotonic() - started)
        if self.sink is not None:
            try:
                self._sink_write(rows)
            except OSError:
                log.exception("audit: could not write the JSONL sink")

    def _prepare(self, batch: list[Pending]) -> list[Row]:
        cfg = self.config
        rows = []
        for pending in batch:
            try:
                rows.append(prepare(pending, self.redactor, cfg.max_body_bytes, cfg.bodies))
            except Exception as exc:
                # One odd record (an annotation orjson cannot encode, a header that is not
                # UTF-8) must not cost the batch: record it plainly, and say so.
                log.warning("audit: record %s prepared without annotations (%s)",
                            pending.meta.get("id"), type(exc).__name__)
                rows.append(prepare(plain_pending(pending, type(exc).__name__), self.redactor,
                                    cfg.max_body_bytes, cfg.bodies))
        return rows

    def _sink_write(self, rows: list[Row]) -> None:
        assert self.sink is not None
        self.sink.write([row.record() for row in rows if row.seq])

    async def _prune(self) -> None:
        config = self.config
        if config.max_age is not None or config.max_rows is not None:
            deleted = await self.store.prune(config.max_age, config.max_rows)
            if deleted:
                log.info("audit: pruned %d records", deleted)
        if config.body_max_age is not None:
            expired, self._bodies_after = await self.store.expire_bodies(
                config.body_max_age, self._bodies_after)
            if expired:
                log.info("audit: deleted the bodies of %d records older than %s",
                         expired, _days(config.body_max_age))

    def status(self) -> dict[str, Any]:
        head = self.committed
        return {"committed_seq": head.seq, "committed_hash": head.hash,
                "queue_depth": self.queue.qsize(), "written": self.written,
                "dropped": self.dropped}


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g} days" if seconds >= 86400 else f"{seconds:g} s"
