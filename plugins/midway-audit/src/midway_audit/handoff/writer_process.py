"""The writer process: everything audit does besides taking a copy of the record.

Started by the relay (channel.py) with one end of a socket pair and the shared ring (ring.py).
It reads the configuration frame, opens the store, records what dead instances left behind
(at start-up, then every ``recover_interval`` seconds: an instance may die while this one runs),
then, at each wake-up, reads the intents and records (frames.py) the ring holds and hands
them to the intent log and the batch writer: parsing, reassembly, redaction, hashing and the
store's commits all run here, on another core than the relay's. After each commit it reports
a status line (committed head, counts, metric updates).

It ends when the relay's end of the socket closes — a clean shutdown, or the relay killed: it
then reads what is left in the ring, writes every record it has received, turns the intents
still open into records marked interrupted, and exits. Signals are ignored: a terminal's
Ctrl-C reaches the whole process group, and the relay still has records to hand over after it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable
from typing import Any

import orjson

from midway.background import start_every
from midway.heap import release_freed_memory
from midway.options import load_table
from midway.storage import new_instance
from midway.storage.retry import STORE_WAIT
from midway_audit.config import AuditConfig
from midway_audit.handoff.frames import BY_SOCKET, CONFIG, INTENT, RECORD, WAKE, line, read_frame
from midway_audit.handoff.intents import IntentLog, interrupted_rows
from midway_audit.handoff.ring import RingReader
from midway_audit.handoff.writer import AuditWriter
from midway_audit.jsonl_sink import JsonlSink
from midway_audit.record import received
from midway_audit.redact import Redactor
from midway_audit.stores.store import AuditStore

log = logging.getLogger("midway.audit")

STATUS_INTERVAL = 0.05  # seconds between status lines


class MetricOps:
    """Stands in for AuditMetrics: gathers the updates between two status lines, coalesced
    (increments summed, a gauge's last value), for the relay to apply to its own metrics."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str | None], float] = {}
        self.values: dict[tuple[str, str | None], float] = {}
        self.observed: list[tuple[str, str | None, str, float]] = []

    def __getattr__(self, name: str) -> _Metric:
        return _Metric(self, name, None)

    def take(self) -> list[tuple[str, str | None, str, float]]:
        """The updates since the last call, as ``(name, label, op, value)``."""
        ops = [(name, label, "inc", amount) for (name, label), amount in self.sums.items()]
        ops += [(name, label, "set", value) for (name, label), value in self.values.items()]
        ops += self.observed
        self.sums, self.values, self.observed = {}, {}, []
        return ops


class _Metric:
    __slots__ = ("key", "label", "name", "ops")

    def __init__(self, ops: MetricOps, name: str, label: str | None) -> None:
        self.ops, self.name, self.label = ops, name, label
        self.key = (name, label)

    def labels(self, label: str) -> _Metric:
        return _Metric(self.ops, self.name, label)

    def inc(self, amount: float = 1) -> None:
        sums = self.ops.sums
        sums[self.key] = sums.get(self.key, 0) + amount

    def set(self, value: float) -> None:
        self.ops.values[self.key] = value

    def observe(self, value: float) -> None:
        self.ops.observed.append((self.name, self.label, "observe", value))


class WriterProcess:
    def __init__(self, reader: asyncio.StreamReader, out: asyncio.StreamWriter,
                 ring: RingReader) -> None:
        self.reader = reader
        self.out = out
        self.ring = ring
        self._upto = ring.pos  # the ring's frames the relay has said are complete
        self._orphans_before = 0
        self._max_body = 0
        # frames too large for the ring, read from the socket before their marker's turn
        self._large: collections.deque[tuple[int, bytes, bytes, bytes]] = collections.deque()
        self.metrics = MetricOps()
        self.store: AuditStore | None = None
        self.writer: AuditWriter | None = None
        self.intents: IntentLog | None = None
        self.redactor: Redactor | None = None
        self.instance = 0
        self.taken = 0  # records taken from the ring (committed or not)
        self._changed = asyncio.Event()

    async def run(self) -> int:
        first = await read_frame(self.reader)
        if first is None or first[0] != CONFIG:
            log.error("audit writer: no configuration from the relay")
            return 1
        table = orjson.loads(first[1])
        # Large frames announced in the ring before this writer started went over a dead
        # writer's socket: they are lost (and counted), the rest of the ring is read.
        self._orphans_before = int(table.get("orphans_before", 0))
        logging.getLogger().setLevel(table.get("log_level", logging.INFO))
        STORE_WAIT.set(float(table.get("store_wait", 0.0)))
        try:
            config = await self._start(table)
        except Exception as exc:
            log.exception("audit writer: could not start")
            self._send({"error": f"{type(exc).__name__}: {exc}"})
            await self._drain_out()
            return 1
        reporter = asyncio.create_task(
            self._report(0.0 if config.write_ahead_durable else STATUS_INTERVAL),
            name="midway-audit-report")
        recovering = start_every(config.recover_interval, self._recover,
                                 name="audit: recording what dead instances left",
                                 log=log) if config.recover_interval else None
        try:
            await self._serve(config)
        finally:
            if recovering is not None:  # not racing the stop path's own interrupted records
                recovering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recovering
            await self._stop()
            reporter.cancel()
            self._send(self._status())
            await self._drain_out()
        return 0

    async def _start(self, table: dict[str, Any]) -> AuditConfig:
        from pathlib import Path

        data_dir = Path(table["data_dir"])
        # The relay checked this table, with the same MIDWAY_AUDIT__* variables (inherited).
        config = load_table(AuditConfig, "audit", table["config"], env=os.environ,
                            data_dir=data_dir)
        redactor = Redactor(config.redact_defaults, config.redact_patterns,
                            config.redact_headers)
        self.redactor = redactor
        store = AuditStore(config, inline=True)
        await store.open()
        self.store = store
        # The relay's instance: it owns the requests in flight, and claims the number too —
        # a writer restarted by a live relay must not take its intents for a dead one's.
        instance = int(table.get("instance") or new_instance())
        self.instance = instance
        if config.write_ahead:
            await store.claim(instance)
        recovered = await self._recover()
        sink = None
        jsonl = config.jsonl_path(data_dir)
        if jsonl is not None:
            sink = JsonlSink(jsonl, config.jsonl_max_bytes, config.jsonl_backups)
            sink.open()
        if config.write_ahead:
            self.intents = IntentLog(store, redactor, instance, self.metrics, self._changed.set,
                                     0.0 if config.write_ahead_durable else config.batch_linger)
        self.writer = AuditWriter(store, config, redactor, self.metrics, sink, self.intents,
                                  self._changed.set)
        await self.writer.start()
        # What start-up freed (imports' temporaries, recovery's rows) goes back to the system.
        gc.collect()
        release_freed_memory()
        self._send({"ready": True, "recovered": recovered, **self._status()})
        return config

    async def _recover(self) -> int:
        """Record the intents of dead instances (not this one) as interrupted; how many."""
        assert self.store is not None
        assert self.redactor is not None
        redactor = self.redactor
        recovered = await self.store.recover(self.instance,
                                             lambda found: interrupted_rows(found, redactor))
        if recovered:
            log.warning("audit: recorded %d requests interrupted by a stopped instance",
                        recovered)
            self.metrics.recovered.inc(recovered)
            if self.writer is not None:  # while running: the relay hears of it at once
                self.writer.written += recovered
                self._changed.set()
        return recovered

    async def _serve(self, config: AuditConfig) -> None:
        self._max_body = config.max_body_bytes
        reader, ring = self.reader, self.ring
        while True:
            item = await read_frame(reader)
            if item is None:  # the relay is gone: its stores to the ring are all visible
                await self._consume(ring.head)
                return
            kind, _, a, _ = item
            if kind == WAKE:
                await self._consume(int.from_bytes(a, "little"))
            else:  # a frame too large for the ring; its marker is (or will be) there
                self._large.append(item)
                await self._consume(self._upto)

    async def _consume(self, upto: int) -> None:
        """Take the ring's frames up to ``upto`` (or up to a marker whose frame has not come
        over the socket yet)."""
        self._upto = max(self._upto, upto)
        ring, large = self.ring, self._large
        while (item := ring.peek(self._upto)) is not None:
            kind, meta, a, b, end = item
            if kind == BY_SOCKET and end <= self._orphans_before:
                ring.take(end)
                log.error("audit: a record too large for the ring, handed to a writer process "
                          "that died, may be lost")
                self.metrics.dropped.labels("writer_died").inc()
                continue
            if kind == BY_SOCKET:
                if not large:
                    break
                kind, meta, a, b = large.popleft()
            ring.take(end)
            if kind == RECORD:
                self.taken += 1
                self._changed.set()  # reported with the next status line
            waiting = self._take(kind, meta, a, b, end)
            if waiting is not None:
                await waiting
        self._release()

    def _release(self) -> None:
        """Give the relay the ring's room back up to the first frame not yet committed (or
        otherwise done with): a writer killed now leaves the rest to be read again."""
        bound = self.ring.pos
        writer, intents = self.writer, self.intents
        if writer is not None and writer.unwritten:
            bound = min(bound, writer.done_end)
        if intents is not None and intents.busy:
            bound = min(bound, intents.done_end)
        self.ring.release(bound)

    def _take(self, kind: int, meta: bytes, a: bytes, b: bytes, end: int
              ) -> Awaitable[None] | None:
        """Hand a frame on; an awaitable when the writer's queue is full (backpressure: the
        ring fills up behind it)."""
        assert self.writer is not None
        intents = self.intents
        if kind == RECORD:
            pending = received(meta, a, b, self._max_body)
            pending.ring_end = end
            pending.replay = end <= self._orphans_before
            # a request whose intent this writer dropped unwritten (or, without
            # write-ahead, that had none) is named nowhere in the store yet
            stored = intents.settle(str(pending.meta.get("id"))) if intents is not None \
                else False
            pending.intent_stored = stored or pending.replay
            if not self.writer.offer(pending):
                return self.writer.submit(pending)
        elif kind == INTENT and intents is not None:
            intents.add(a.decode(), meta, end, end <= self._orphans_before)  # a: the id
        return None

    async def _stop(self) -> None:
        if self.intents is not None:
            await self.intents.drain()
        if self.writer is not None:
            await self.writer.stop()
            if self.intents is not None:
                await self._interrupt()
        if self.store is not None:
            await self.store.close()

    async def _interrupt(self) -> None:
        """The relay is gone (stopped or killed) and has handed over everything: the intents
        still open — this writer's, and a killed predecessor's whose records never came (it
        had taken them from the ring) — are requests that never finished."""
        assert self.intents is not None
        assert self.store is not None
        assert self.writer is not None
        rows = self.intents.interrupted()
        seen = {row.request_id for row in rows}
        rows += [row for row in interrupted_rows(await self.store.left_by(self.instance),
                                                 self.intents.redactor)
                 if row.request_id not in seen]
        if not rows:
            return
        await self.store.append(rows, retrying=True)  # skips ids recorded meanwhile
        written = sum(1 for row in rows if row.seq)
        log.warning("audit: the relay stopped with %d requests in flight; recorded as "
                    "interrupted", written)
        self.writer.written += written
        self.metrics.recovered.inc(written)

    async def _report(self, interval: float) -> None:
        """A status line after commits (intents or records): at once when the relay waits
        for intents (durable write-ahead), else at most every ``interval`` seconds — each
        line wakes the relay, which costs it."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            self._release()  # after commits: their frames' room goes back to the relay
            self._send(self._status())
            await self._drain_out()
            if interval:
                await asyncio.sleep(interval)

    def _status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.writer.status() if self.writer is not None else {}
        status["intents_done"] = self.intents.done if self.intents is not None else 0
        status["records_taken"] = self.taken
        status["metrics"] = self.metrics.take()
        return status

    def _send(self, message: dict[str, Any]) -> None:
        if not self.out.is_closing():
            self.out.write(line(message))

    async def _drain_out(self) -> None:
        try:
            await self.out.drain()
        except ConnectionError:
            pass  # the relay is gone: nobody to tell


async def _main(fd: int, ring_fd: int) -> int:
    sock = socket.socket(fileno=fd)
    ring = RingReader(ring_fd)
    os.close(ring_fd)
    reader, out = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
    try:
        return await WriterProcess(reader, out, ring).run()
    finally:
        out.close()
        ring.close()


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    # Background work: when cores are contended the relay's requests come first; the writer
    # catches up in the gaps (and if it cannot, the ring fills and requests wait for it).
    os.nice(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    # asyncio's own loop, not uvloop: the writer's loop wakes a few times per batch_linger,
    # and uvloop's library would be 2 MB of its resident memory.
    sys.exit(asyncio.run(_main(int(sys.argv[1]), int(sys.argv[2]))))


if __name__ == "__main__":
    main()
