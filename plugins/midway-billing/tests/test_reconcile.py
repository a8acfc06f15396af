"""Crashed instances' pending rows and holds are reconciled by the next instance, and only
theirs: a live instance's rows are left alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from midway_billing.budgets import Bucket
from midway_billing.config import BillingConfig
from midway_billing.store import Reservation, Store

KEY = Bucket("team", "search", "total", 0).key


def row(store: Store, row_id: str, exchange_id: str) -> dict[str, Any]:
    return {"id": row_id, "exchange_id": exchange_id, "attempt": 1, "kind": "attempt",
            "state": "pending", "instance": store.instance, "created_at": 1.0,
            "settled_at": None, "principal": "alice", "principal_name": "alice",
            "team": "search", "project": None, "model": "claude-haiku-4-5",
            "priced_model": None, "upstream": "default", "key_id": None,
            "path": "/v1/messages", "status": None, "error": None, "input_tokens": 0,
            "output_tokens": 0, "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0,
            "cache_read_tokens": 0, "web_search_requests": 0, "cost_pusd": 0, "saved_pusd": 0,
            "unpriced": 0, "batch": 0}


async def crash(store: Store) -> None:
    """Drop a store's connections and liveness lock without settling anything."""
    if hasattr(store, "_lock_conn"):
        await store._pool.close()
        store._lock_conn.terminate()
    else:
        store._lock.close()  # the lock file stays, unlocked: as after kill -9
        await asyncio.get_running_loop().run_in_executor(store._executor, store._con.close)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_reconcile_dead_not_live(backend: str, tmp_path: Path, request) -> None:
    table: dict[str, Any] = {}
    if backend == "postgresql":
        table = {"store": request.getfixturevalue("postgres_dsn"),
                 "schema": request.getfixturevalue("pg_schema")}

    async def run() -> None:
        config = BillingConfig.from_table(table, tmp_path)
        dead, live, fresh = (config.make_store() for _ in range(3))
        for store in (dead, live):
            await store.open()
        # dead: one exchange reached the upstream (row + hold), one never did (hold only)
        await dead.reserve(Reservation("ex-sent", 7, [KEY], 1.0), {KEY: 100})
        await dead.write_ahead(row(dead, "ex-sent.1", "ex-sent"))
        await dead.reserve(Reservation("ex-unsent", 5, [KEY], 1.0), {KEY: 100})
        await live.reserve(Reservation("ex-live", 3, [KEY], 1.0), {KEY: 100})
        await live.write_ahead(row(live, "ex-live.1", "ex-live"))
        await crash(dead)
        await fresh.open()
        try:
            assert await fresh.reconcile() == 1
            rows = {r["id"]: r for r in await fresh.rows()}
            assert rows["ex-sent.1"]["state"] == "reconciled"
            assert rows["ex-sent.1"]["cost_pusd"] == 7  # charged its estimate
            assert rows["ex-live.1"]["state"] == "pending"
            # the live hold stays; the dead ones are released, the sent one charged
            assert (await fresh.counters([KEY]))[KEY] == (7, 3)
            assert await fresh.reconcile() == 0  # idempotent
        finally:
            await fresh.close()
            await live.close()

    asyncio.run(run())
