"""The queue and batch writer: backpressure, the drop policy, a failing store, the flush."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from midway.options import load_table
from midway.testing import make_exchange
from midway_audit.chain import Head
from midway_audit.config import AuditConfig
from midway_audit.handoff.writer import AuditWriter
from midway_audit.metrics import AuditMetrics
from midway_audit.record import Pending, Row, capture, received
from midway_audit.redact import Redactor


class GatedStore:
    """A store whose appends wait for a gate, and fail the first ``failures`` times."""

    def __init__(self, failures: int = 0) -> None:
        self.gate = asyncio.Event()
        self.rows: list[Row] = []
        self.failures = failures
        self.retried: list[bool] = []

    async def head(self) -> Head:
        return Head()

    async def append(self, rows: list[Row], retrying: bool = False) -> Head:
        await self.gate.wait()
        self.retried.append(retrying)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database went away")
        self.rows.extend(rows)
        return Head(seq=len(self.rows))


def writer(store: Any, **config: Any) -> tuple[AuditWriter, CollectorRegistry]:
    registry = CollectorRegistry()
    # the store is the test's own: the configured one (a file in the data dir) is never opened
    cfg = load_table(AuditConfig, "audit", config, data_dir=Path("/nonexistent"))
    return AuditWriter(store, cfg, Redactor(), AuditMetrics(registry)), registry


def captured(exchange: Any) -> Pending:
    """What the writer process makes of the relay's record frame for ``exchange``."""
    return received(*capture(exchange, True), 1 << 20)


def pending(n: int) -> Any:
    return captured(make_exchange(body={"model": "m", "messages": [{"role": "user",
                                                                    "content": str(n)}]}))


def test_full_queue_makes_requests_wait_then_everything_is_written():
    async def main() -> None:
        store = GatedStore()
        w, registry = writer(store, queue_size=5, batch_size=2)
        await w.start()
        submits = [asyncio.create_task(w.submit(pending(i))) for i in range(20)]
        await asyncio.sleep(0.05)  # every chance to (wrongly) get through
        done = sum(t.done() for t in submits)
        # the queue holds 5, the writer one batch (of at most 2): the rest wait
        assert 5 < done <= 7
        assert registry.get_sample_value("midway_audit_queue_depth") == 5
        store.gate.set()
        await asyncio.wait_for(asyncio.gather(*submits), 2)
        await w.stop()
        assert len(store.rows) == 20 and w.dropped == 0
        assert registry.get_sample_value("midway_audit_records_written_total") == 20

    asyncio.run(main())


def test_drop_policy_counts_every_drop():
    async def main() -> None:
        store = GatedStore()
        w, registry = writer(store, queue_size=3, batch_size=1, on_full="drop")
        await w.start()
        for i in range(10):
            await asyncio.wait_for(w.submit(pending(i)), 1)
        store.gate.set()
        await w.stop()
        assert len(store.rows) + w.dropped == 10
        assert w.dropped >= 6
        assert registry.get_sample_value("midway_audit_records_dropped_total",
                                         {"reason": "queue_full"}) == w.dropped

    asyncio.run(main())


def test_failing_store_is_retried_and_skips_what_an_ambiguous_commit_wrote():
    async def main() -> None:
        store = GatedStore(failures=2)
        store.gate.set()
        w, registry = writer(store)
        await w.start()
        await w.submit(pending(1))
        await w.stop()
        assert len(store.rows) == 1
        assert store.retried == [False, True, True]
        assert registry.get_sample_value("midway_audit_write_errors_total") == 2

    asyncio.run(main())


def test_shutdown_gives_up_on_a_dead_store_after_flush_timeout():
    async def main() -> None:
        store = GatedStore(failures=10**6)
        store.gate.set()
        w, registry = writer(store, flush_timeout=0.2)
        await w.start()
        await w.submit(pending(1))
        await asyncio.wait_for(w.stop(), 5)
        assert registry.get_sample_value("midway_audit_records_dropped_total",
                                         {"reason": "store_failed"}) == 1

    asyncio.run(main())


def test_queue_is_bounded_by_bytes_too():
    async def main() -> None:
        store = GatedStore()
        w, _ = writer(store, queue_size=1000, batch_size=1, queue_max_bytes=50_000)
        await w.start()
        big = [captured(make_exchange(body={"model": "m", "messages": [
            {"role": "user", "content": "x" * 10_000}]})) for _ in range(10)]
        submits = [asyncio.create_task(w.submit(p)) for p in big]
        await asyncio.sleep(0.05)
        done = sum(t.done() for t in submits)
        assert 1 < done < 10  # a few fit in 50 KB (plus one batch taken), the rest wait
        store.gate.set()
        await asyncio.wait_for(asyncio.gather(*submits), 2)
        await w.stop()
        assert len(store.rows) == 10

    asyncio.run(main())
