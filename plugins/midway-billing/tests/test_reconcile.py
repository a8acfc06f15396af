"""Crashed instances' pending rows and holds are reconciled by the next instance, and only
theirs: a live instance's rows are left alone. A settlement that comes after all (the instance
was taken for dead, or reconciliation ran late) corrects the counters; one the database
refused for a moment is retried until it lands."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from midway.options import load_table
from midway.storage import Schema
from midway.storage.liveness import PostgresLiveness
from midway_billing.budgets import Bucket
from midway_billing.config import BillingConfig
from midway_billing.plugin import Billing, Settlement
from midway_billing.store import SCHEMA, Reservation, Store

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
            "unpriced": 0, "batch": 0, "session_id": None, "agent_id": None,
            "parent_agent_id": None}


def settled(store: Store, row_id: str, exchange_id: str, cost: int) -> dict[str, Any]:
    return {**row(store, row_id, exchange_id), "state": "settled", "settled_at": 2.0,
            "status": 200, "cost_pusd": cost}


async def crash(store: Store) -> None:
    """Drop a store's connections and liveness lock without settling anything."""
    live = store.liveness
    if isinstance(live, PostgresLiveness):
        live._watch.cancel()
        live._conn.terminate()
    else:
        live._held.close()  # the lock file stays, unlocked: as after kill -9
    await store.db.close()


def table_for(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if backend == "postgresql":
        return {"store": request.getfixturevalue("postgres_dsn"),
                "schema": request.getfixturevalue("pg_schema")}
    return {}


async def ledger_sum(store: Store) -> int:
    return sum(r["cost_pusd"] for r in await store.rows())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_reconcile_dead_not_live(backend: str, tmp_path: Path, request) -> None:
    table = table_for(backend, request)

    async def run() -> None:
        config = load_table(BillingConfig, "billing", table, data_dir=tmp_path)
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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_settlement_after_a_false_reconciliation_heals_the_counters(
        backend: str, tmp_path: Path, request) -> None:
    table = table_for(backend, request)

    async def run() -> None:
        config = load_table(BillingConfig, "billing", table, data_dir=tmp_path)
        store, peer = config.make_store(), config.make_store()
        for each in (store, peer):
            await each.open()
        try:
            sent = Reservation("ex-sent", 700, [KEY], 1.0)
            later = Reservation("ex-later", 500, [KEY], 1.0)
            for reservation in (sent, later):
                assert (await store.reserve(reservation, {KEY: 10_000})).admitted
            await store.write_ahead(row(store, "ex-sent.1", "ex-sent"))
            assert await peer.reconcile() == 0  # store is alive: nothing of it is touched
            assert (await peer.counters([KEY]))[KEY] == (0, 1200)
            # As if a peer had taken it for dead: sent charged its estimate, later nothing.
            assert await peer.reconcile_instance(store.instance) == 1
            assert (await peer.counters([KEY]))[KEY] == (700, 0) and \
                await ledger_sum(peer) == 700
            # The requests finish after all: later was sent after the reconciliation.
            await store.settle([settled(store, "ex-sent.1", "ex-sent", 123)], sent, 123)
            await store.write_ahead(row(store, "ex-later.1", "ex-later"))
            await store.settle([settled(store, "ex-later.1", "ex-later", 45)], later, 45)
            rows = await peer.rows()
            assert [(r["id"], r["state"], r["cost_pusd"]) for r in rows] == [
                ("ex-later.1", "settled", 45), ("ex-sent.1", "settled", 123)]
            assert (await peer.counters([KEY]))[KEY] == (168, 0) == (await ledger_sum(peer), 0)
            assert await peer.reconcile_instance(store.instance) == 0  # nothing left to do
        finally:
            for each in (store, peer):
                await each.close()

    asyncio.run(run())


def test_settlement_is_retried_until_the_database_takes_it(postgres_dsn: str, pg_schema: str,
                                                           tmp_path: Path, caplog) -> None:
    """The settlement's connection is cut mid-transaction (as by a database restart): the
    request does not wait for it, a writer task retries, the real cost lands, the log has one
    line for the outage and one for its end. At shutdown, what cannot land is named."""
    caplog.set_level(logging.WARNING, "midway.billing")
    config = load_table(BillingConfig, "billing", {
        "store": postgres_dsn, "schema": pg_schema, "max_pool": 1}, data_dir=tmp_path)

    async def blocked(billing: Billing, exchange_id: str, cost: int
                      ) -> tuple[asyncpg.Connection, asyncio.Task[None], int]:
        """A settlement of ``exchange_id`` waiting on a lock held by another connection."""
        store = billing.store
        reservation = Reservation(exchange_id, 700, [KEY], 1.0)
        await store.reserve(reservation, {KEY: 10_000})
        await store.write_ahead(row(store, f"{exchange_id}.1", exchange_id))
        blocker = await asyncpg.connect(postgres_dsn, server_settings={"search_path": pg_schema})
        await blocker.execute("BEGIN")
        await blocker.execute("SELECT 1 FROM billing_reservations WHERE exchange_id = $1 "
                              "FOR UPDATE", exchange_id)
        task = billing.settle(Settlement(
            exchange_id, [settled(store, f"{exchange_id}.1", exchange_id, cost)], reservation,
            cost))
        for _ in range(1000):  # until the settlement waits for the blocker
            waiting = await blocker.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                blocker.get_server_pid())
            if waiting:
                return blocker, task, int(waiting)
            await asyncio.sleep(0.01)
        raise AssertionError("the settlement never reached the database")

    async def run() -> None:
        billing = Billing(config)
        await billing.start(background=False)
        blockers = []
        try:
            blocker, task, victim = await blocked(billing, "ex-blink", 123)
            blockers.append(blocker)
            await blocker.fetchval("SELECT pg_terminate_backend($1)", victim)
            await blocker.execute("ROLLBACK")
            await asyncio.wait_for(task, 10)  # the request's part is done: queued, not waiting
            assert await billing.flush(30)
            rows = {r["id"]: r for r in await billing.store.rows()}
            assert rows["ex-blink.1"]["state"] == "settled"
            assert rows["ex-blink.1"]["cost_pusd"] == 123
            assert (await billing.store.counters([KEY]))[KEY] == (123, 0)
            outage = [r.getMessage() for r in caplog.records if "settling" in r.getMessage()]
            assert len(outage) == 2 and "failed" in outage[0] and "works again" in outage[1]

            # A settlement still blocked at shutdown is waited for a bounded time, then named.
            blocker, _, _ = await blocked(billing, "ex-stuck", 45)
            blockers.append(blocker)
            billing.settle_grace = 0.2
            await asyncio.wait_for(billing.stop(), 30)
            assert "1 settlement(s) could not be written before shutdown: ex-stuck" in \
                caplog.text
        finally:
            for conn in blockers:  # never leave a lock that would hold up DROP SCHEMA
                conn.terminate()

    asyncio.run(run())



def test_a_settlement_leaves_what_a_row_bills_to_and_its_indexes_alone(tmp_path: Path) -> None:
    """What a row bills to is written ahead with it; its settlement's upsert leaves those
    columns out, so that of the ledger's indexes SQLite rewrites only those on (or, partial,
    for) its state and instance — a fraction of the pages a settlement would write
    otherwise."""
    import re
    import sqlite3

    from midway_billing.store import LEDGER_COLUMNS, SCHEMA, UPSERT

    conn = sqlite3.connect(":memory:")
    for statement in SCHEMA.statements("sqlite"):
        conn.execute(statement)
    indexes = list(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                                "AND tbl_name = 'billing_ledger' AND sql IS NOT NULL"))
    indexed = {info[2] for name, _ in indexes for info in conn.execute(
        f"PRAGMA index_info({name})")}
    # a partial index's rows change with the columns its WHERE names too
    indexed |= {word for _, sql in indexes if " WHERE " in sql
                for word in re.findall(r"\w+", sql.split(" WHERE ", 1)[1])
                if word in LEDGER_COLUMNS}
    updated = {c.split("=")[0].strip() for c in UPSERT.split(" DO UPDATE SET ")[1].split(",")}
    assert "principal" in indexed and "cost_pusd" in updated
    assert indexed & updated == {"state", "instance"}

    async def run() -> None:
        store = load_table(BillingConfig, "billing", {}, data_dir=tmp_path).make_store()
        await store.open()
        try:
            await store.write_ahead(row(store, "ex.1", "ex"))
            await store.settle([{**settled(store, "ex.1", "ex", 42), "team": "elsewhere"}],
                               None, 0)
            (landed,) = await store.rows()
            assert (landed["state"], landed["cost_pusd"], landed["team"]) == (
                "settled", 42, "search")
        finally:
            await store.close()

    asyncio.run(run())


# The indexes older versions made on every row (the tables are as they were).
OLD_INDEXES = """
CREATE INDEX IF NOT EXISTS billing_ledger_created ON billing_ledger (created_at);
CREATE INDEX IF NOT EXISTS billing_ledger_principal ON billing_ledger (principal, created_at);
CREATE INDEX IF NOT EXISTS billing_ledger_team ON billing_ledger (team, created_at);
CREATE INDEX IF NOT EXISTS billing_ledger_project ON billing_ledger (project, created_at);
CREATE INDEX IF NOT EXISTS billing_ledger_pending ON billing_ledger (state, instance);
CREATE INDEX IF NOT EXISTS billing_ledger_exchange ON billing_ledger (exchange_id);
CREATE INDEX IF NOT EXISTS billing_ledger_corrects ON billing_ledger (corrects);
CREATE INDEX IF NOT EXISTS billing_ledger_session ON billing_ledger (session_id, created_at);
CREATE INDEX IF NOT EXISTS billing_reservations_instance ON billing_reservations (instance)
"""
DROPPED = {"billing_ledger_team", "billing_ledger_project", "billing_ledger_pending",
           "billing_ledger_exchange", "billing_ledger_corrects", "billing_ledger_session",
           "billing_reservations_instance"}
PARTIAL = {"billing_ledger_by_team", "billing_ledger_by_project", "billing_ledger_by_session",
           "billing_ledger_correcting", "billing_ledger_open", "billing_ledger_reconciled"}


async def index_names(store: Store) -> set[str]:
    if store.db.dialect == "sqlite":
        rows = await store.db.fetch("SELECT name FROM sqlite_master WHERE type = 'index'")
        return {r["name"] for r in rows}
    rows = await store.db.fetch("SELECT indexname AS name FROM pg_indexes "
                                "WHERE schemaname = current_schema()")
    return {r["name"] for r in rows}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_older_store_is_migrated_to_partial_indexes(backend: str, tmp_path: Path,
                                                       request) -> None:
    """A store an older version made (full indexes on team, project, session, corrects,
    (state, instance), exchange id, and the reservations' instance) is migrated when it
    opens: those indexes are replaced by partial ones that rows without the value never
    enter (fewer pages written per row), and what the store held is found as before — a
    dead instance's pending row and hold are reconciled, at its estimate."""
    table = table_for(backend, request)
    tables = ";".join(s for s in SCHEMA.ddl.split(";") if "CREATE TABLE" in s)

    async def run() -> None:
        config = load_table(BillingConfig, "billing", table, data_dir=tmp_path)
        old = config.make_store()
        await old.db.open(Schema("billing", tables + ";" + OLD_INDEXES))
        await old.liveness.claim(old.instance)
        assert await index_names(old) >= DROPPED
        await old.reserve(Reservation("ex", 7, [KEY], 1.0), {KEY: 100})
        await old.write_ahead(row(old, "ex.1", "ex"))
        await crash(old)

        new = config.make_store()
        await new.open()
        try:
            names = await index_names(new)
            assert not DROPPED & names and names >= PARTIAL
            assert await new.reconcile() == 1
            (landed,) = await new.rows()
            assert (landed["state"], landed["cost_pusd"]) == ("reconciled", 7)
            assert await new.all_counters() == {KEY: (7, 0)}
        finally:
            await new.close()

    asyncio.run(run())


def test_a_row_names_only_the_columns_off_their_default_and_settles_them_all(
        tmp_path: Path) -> None:
    """A ledger row is written with the columns that differ from their default (NULL, or 0
    for counts and flags): a pending row binds no zeros. Its settlement still sets every
    column it settles, a zero too: a late settlement at $0 over a row reconciliation had
    charged its estimate leaves $0."""
    from midway_billing.store import KEEP, UPSERT, row_values, write_row

    async def run() -> None:
        config = load_table(BillingConfig, "billing", {"store": "billing.db"},
                            data_dir=tmp_path)
        store = config.make_store()
        await store.open()
        base = {"id": "x.1", "exchange_id": "x", "attempt": 1, "kind": "attempt",
                "instance": 7, "created_at": 1.0, "principal": "p", "principal_name": "p",
                "team": None, "project": None, "model": "m", "priced_model": None,
                "upstream": "u", "key_id": "k", "path": "/v1/messages", "status": None,
                "error": None, "settled_at": None, "input_tokens": 0, "output_tokens": 0,
                "cache_write_5m_tokens": 0, "cache_write_1h_tokens": 0,
                "cache_read_tokens": 0, "web_search_requests": 0, "cost_pusd": 0,
                "saved_pusd": 0, "unpriced": 0, "batch": 0}
        pending = {**base, "state": "pending"}
        columns, values = row_values(pending)
        assert "cost_pusd" not in columns and "batch" not in columns and 0 not in values
        try:
            await store.db.run(lambda tx: write_row(tx, pending, KEEP))
            await store.db.execute("UPDATE billing_ledger SET state = 'reconciled', "
                                   "cost_pusd = 5000, unpriced = 1 WHERE id = ?", "x.1")
            settled = {**base, "state": "settled", "settled_at": 2.0, "status": 200,
                       "input_tokens": 3}
            await store.db.run(lambda tx: write_row(tx, settled, UPSERT))
            row = await store.db.fetchone("SELECT * FROM billing_ledger WHERE id = ?", "x.1")
            assert row is not None
            assert (row["state"], row["cost_pusd"], row["unpriced"], row["input_tokens"],
                    row["output_tokens"], row["batch"]) == ("settled", 0, 0, 3, 0, 0)
        finally:
            await store.close()

    asyncio.run(run())


def test_a_settlement_the_database_refuses_for_good_is_logged_once_and_not_retried(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A settlement whose unit fails with an error that is not transient (a bug: here a row
    missing a column): its future raises it, the log has it once, it is not queued for the
    writer, and it holds up neither flush() nor shutdown. The next settlement lands."""
    caplog.set_level(logging.ERROR, "midway.billing")
    config = load_table(BillingConfig, "billing", {"store": "billing.db"}, data_dir=tmp_path)

    async def run() -> None:
        billing = Billing(config)
        await billing.start(background=False)
        store = billing.store
        try:
            await store.write_ahead(row(store, "ex-bad.1", "ex-bad"))
            broken = settled(store, "ex-bad.1", "ex-bad", 5)
            del broken["principal"]
            with pytest.raises(KeyError, match="principal"):
                await billing.settle(Settlement("ex-bad", [broken], None, 5))
            assert await billing.flush(5)
            assert not billing._backlog
            await store.write_ahead(row(store, "ex-ok.1", "ex-ok"))
            await billing.settle(Settlement(
                "ex-ok", [settled(store, "ex-ok.1", "ex-ok", 7)], None, 7))
            assert await billing.flush(5)
            states = {r["id"]: r["state"] for r in await store.rows()}
            assert states == {"ex-bad.1": "pending", "ex-ok.1": "settled"}
        finally:
            await billing.stop()
        logged = [r for r in caplog.records if "settlement could not be written" in
                  r.getMessage()]
        assert len(logged) == 1 and "shutdown" not in caplog.text

    asyncio.run(run())
