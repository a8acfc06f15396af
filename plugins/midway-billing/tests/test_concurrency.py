"""Settlement and reconciliation under load on PostgreSQL (issue 18.10).

Three instances reserve, write ahead and settle many exchanges at once, over buckets they
share, while a peer reconciles each of them again and again — as it does when it takes a live
instance for dead (a late settlement then corrects the counters). Units that lock reservation
rows, ledger rows and counters in different orders deadlock; PostgreSQL then aborts one of them,
and a settlement so aborted must be tried again, not lost. Checked: every exchange ends settled
at its real cost, nothing pending or held, and every counter equals the ledger's sum.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from typing import Any

from test_reconcile import row, settled

from midway.options import load_table
from midway_billing.budgets import Bucket
from midway_billing.config import BillingConfig
from midway_billing.plugin import Billing, Settlement
from midway_billing.store import Reservation, Store

INSTANCES = 3
EXCHANGES = 80  # per instance
AT_ONCE = 16  # exchanges in flight per instance
TEAMS = ("search", "ads", "maps")
PRINCIPALS = ("alice", "bob")


async def exchange(billing: Billing, n: int, rng: random.Random) -> tuple[str, int, str, str]:
    store = billing.store
    exchange_id = f"ex-{store.instance}-{n}"
    team, principal = rng.choice(TEAMS), rng.choice(PRINCIPALS)
    buckets = [Bucket("team", team, "total", 0).key,
               Bucket("principal", principal, "total", 0).key]
    rng.shuffle(buckets)
    reservation = Reservation(exchange_id, 1_000 + n, buckets, 1.0)
    result = await retried(lambda: store.reserve(reservation, dict.fromkeys(buckets)))
    assert result.admitted
    attempt = {**row(store, f"{exchange_id}.1", exchange_id), "team": team,
               "principal": principal}
    await retried(lambda: store.write_ahead(attempt))
    await asyncio.sleep(rng.random() * 0.01)  # the upstream answers
    cost = 100 + n
    final = {**settled(store, f"{exchange_id}.1", exchange_id, cost), "team": team,
             "principal": principal}
    await billing.settle(Settlement(exchange_id, [final], reservation, cost))
    return exchange_id, cost, team, principal


async def retried(work: Any) -> Any:
    """The request path's own units (a refused reservation fails the request instead)."""
    from midway.storage import retrying

    return await retrying(work, what="test: request path", log=logging.getLogger("test"))


async def reconcile_forever(peer: Store, instances: list[int], stop: asyncio.Event,
                            done: list[int]) -> None:
    while not stop.is_set():
        for instance in instances:
            await peer.reconcile_instance(instance)
            done.append(instance)


def test_settlements_and_reconciliations_at_once_lose_nothing(
        postgres_dsn: str, pg_schema: str, tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.WARNING)
    config = load_table(BillingConfig, "billing", {"store": postgres_dsn, "schema": pg_schema},
                        data_dir=tmp_path)

    async def run() -> None:
        billings = [Billing(config) for _ in range(INSTANCES)]
        peer = config.make_store()
        for billing in billings:
            await billing.start(background=False)
        await peer.open()
        stop, rounds = asyncio.Event(), []
        reconciler = asyncio.create_task(reconcile_forever(
            peer, [b.store.instance for b in billings], stop, rounds))
        try:
            async def instance(billing: Billing, seed: int) -> list[tuple[str, int, str, str]]:
                rng = random.Random(seed)
                gate = asyncio.Semaphore(AT_ONCE)

                async def one(n: int) -> tuple[str, int, str, str]:
                    async with gate:
                        return await exchange(billing, n, rng)

                return await asyncio.gather(*(one(n) for n in range(EXCHANGES)))

            done = await asyncio.gather(*(instance(b, i) for i, b in enumerate(billings)))
            stop.set()
            await reconciler
            for billing in billings:
                assert await billing.flush(60), "a settlement never landed"
            assert len(rounds) >= INSTANCES, "the reconciler ran beside the settlements"

            rows = {r["exchange_id"]: r for r in await peer.rows()}
            expected = {ex: (cost, team, principal) for each in done
                        for ex, cost, team, principal in each}
            assert set(rows) == set(expected)
            lost = [ex for ex, (cost, _, _) in expected.items()
                    if (rows[ex]["state"], rows[ex]["cost_pusd"]) != ("settled", cost)]
            assert not lost, [rows[ex] for ex in lost[:3]]
            counters = await peer.all_counters()
            for team in TEAMS:
                key = Bucket("team", team, "total", 0).key
                spent = sum(c for c, t, _ in expected.values() if t == team)
                assert counters[key] == (spent, 0), (key, counters[key], spent)
            for principal in PRINCIPALS:
                key = Bucket("principal", principal, "total", 0).key
                spent = sum(c for c, _, p in expected.values() if p == principal)
                assert counters[key] == (spent, 0), (key, counters[key], spent)
            assert not await peer.db.fetch("SELECT * FROM billing_reservations")
        finally:
            stop.set()
            await asyncio.gather(reconciler, return_exceptions=True)
            for billing in billings:
                await billing.stop()
            await peer.close()

    asyncio.run(run())
    deadlocks = [r for r in caplog.records if "deadlock" in r.getMessage()]
    print(f"\nconcurrency: {INSTANCES * EXCHANGES} settlements, deadlocks met and retried: "
          f"{len(deadlocks)} log line(s)")
