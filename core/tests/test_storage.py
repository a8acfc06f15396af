"""midway.storage: the store-URL grammar, one Database API on both dialects, additive
migrations, liveness and retries."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from midway.storage import (
    Database,
    Schema,
    StoreURL,
    StoreURLError,
    Tx,
    check_store,
    liveness,
    new_instance,
    open_database,
    parse_store,
    retrying,
    upgrade_store,
)
from midway.storage.database import SQLiteDatabase
from midway.storage.liveness import KEEPALIVES
from midway.testing_services import wait_for

SCHEMA = Schema("smoke", """
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, n {int} NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS counters_n ON counters (n)
""")
SCHEMA_V2 = Schema("smoke", SCHEMA.ddl.replace(
    "DEFAULT 0)", "DEFAULT 0, note TEXT, weight {real} NOT NULL DEFAULT 1)")
    + ";\nCREATE INDEX IF NOT EXISTS counters_note ON counters (note)")


@pytest.mark.parametrize(("value", "kind", "where"), [
    (None, "sqlite", "DATA/plugin.db"),
    ("", "sqlite", "DATA/plugin.db"),
    ("sqlite", "sqlite", "DATA/plugin.db"),
    ("ledger.db", "sqlite", "DATA/ledger.db"),
    ("sub/ledger.sqlite3", "sqlite", "DATA/sub/ledger.sqlite3"),
    ("/srv/x.db", "sqlite", "/srv/x.db"),
    ("sqlite:///srv/y.db", "sqlite", "/srv/y.db"),
    ("sqlite://rel.db", "sqlite", "DATA/rel.db"),
    ("postgresql://u:secret@h:5432/db", "postgresql", "postgresql://u:***@h:5432/db"),
    ("postgres://h/db", "postgresql", "postgres://h/db"),
])
def test_store_url_grammar(value: str | None, kind: str, where: str, tmp_path: Path) -> None:
    store = parse_store(value, data_dir=tmp_path, default_file="plugin.db", label="[p] store")
    assert store.kind == kind
    assert store.masked == where.replace("DATA", str(tmp_path))
    assert "secret" not in str(store)


@pytest.mark.parametrize("value", ["postgress", "sqlite3", "foo://x", "sqlite://", "redis://h"])
def test_store_url_mistakes_are_errors_not_new_files(value: str, tmp_path: Path) -> None:
    with pytest.raises(StoreURLError, match=r"^\[p\] store: .*use \"sqlite\""):
        parse_store(value, data_dir=tmp_path, default_file="p.db", label="[p] store")


def test_store_url_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_TEST_DSN", "postgresql://u:pw@h/db")
    (tmp_path / "dsn").write_text("postgresql://v:pw2@h/db\n")
    store = parse_store("env:MW_TEST_DSN", data_dir=tmp_path, default_file="p.db", label="x")
    assert store.url == "postgresql://u:pw@h/db" and "pw" not in store.masked.replace("***", "")
    store = parse_store(f"file:{tmp_path}/dsn", data_dir=tmp_path, default_file="p.db",
                        label="x")
    assert store.url == "postgresql://v:pw2@h/db"
    with pytest.raises(StoreURLError, match="MW_TEST_UNSET is not set"):
        parse_store("env:MW_TEST_UNSET", data_dir=tmp_path, default_file="p.db", label="x")
    monkeypatch.setenv("MW_TEST_LOOP", "env:MW_TEST_DSN")
    with pytest.raises(StoreURLError, match="another reference"):
        parse_store("env:MW_TEST_LOOP", data_dir=tmp_path, default_file="p.db", label="x")


@pytest.fixture
def schema_name(pg_schema_factory: Callable[..., str]) -> str:
    """A PostgreSQL schema not there yet (opening a store creates it), dropped after the test."""
    return pg_schema_factory(create=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, schema_name: str) -> StoreURL:
    value = "sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres_dsn")
    return parse_store(value, data_dir=tmp_path, default_file="t.db", label="[t] store")


def with_db(store: StoreURL, schema_name: str, test: Callable[[Database], Awaitable[None]]
            ) -> None:
    """Open the store on SCHEMA, run ``test`` on it, close it."""
    async def main() -> None:
        database = open_database(store, schema=schema_name)
        assert await database.open(SCHEMA) == [f"{_where(database)}: created table counters"]
        try:
            await test(database)
        finally:
            await database.close()

    asyncio.run(main())


def _where(db: Database) -> str:
    return f"{'SQLite' if db.dialect == 'sqlite' else 'PostgreSQL'} {db.store.masked}"


async def _increment(tx: Tx) -> int:
    await tx.execute("INSERT INTO counters (key, n) VALUES (?, 0) ON CONFLICT (key) DO NOTHING",
                     "a")
    n = await tx.fetchval("SELECT n FROM counters WHERE key = ?", "a")
    await tx.execute("UPDATE counters SET n = ? WHERE key = ?", n + 1, "a")
    return int(n) + 1


def test_units_are_atomic_under_concurrency(store: StoreURL, schema_name: str) -> None:
    async def test(db: Database) -> None:
        if db.dialect == "postgresql":
            # read-then-write needs a row lock on PostgreSQL, as any real store's unit takes
            async def unit(tx: Tx) -> int:
                await tx.execute("INSERT INTO counters (key, n) VALUES (?, 0) "
                                 "ON CONFLICT (key) DO NOTHING", "a")
                n = await tx.fetchval("SELECT n FROM counters WHERE key = ? FOR UPDATE", "a")
                await tx.execute("UPDATE counters SET n = ? WHERE key = ?", n + 1, "a")
                return int(n) + 1
        else:
            unit = _increment
        results = await asyncio.gather(*[db.run(unit) for _ in range(40)])
        assert sorted(results) == list(range(1, 41))
        assert await db.fetchval("SELECT n FROM counters WHERE key = ?", "a") == 40

    with_db(store, schema_name, test)


def test_a_unit_that_raises_is_rolled_back(store: StoreURL, schema_name: str) -> None:
    async def test(db: Database) -> None:
        async def fails(tx: Tx) -> None:
            await tx.execute("INSERT INTO counters (key, n) VALUES (?, ?)", "gone", 1)
            raise ValueError("no")

        with pytest.raises(ValueError, match="no"):
            await db.run(fails)
        assert await db.fetchone("SELECT * FROM counters WHERE key = ?", "gone") is None

    with_db(store, schema_name, test)


def test_concurrent_units_commit_or_fail_alone(store: StoreURL, schema_name: str) -> None:
    """Units queued together (SQLite runs them in one transaction, each in a savepoint): one
    that raises is rolled back alone, the others land, each caller gets its own outcome."""
    async def test(db: Database) -> None:
        def unit(i: int) -> Callable[[Tx], Awaitable[int]]:
            async def run(tx: Tx) -> int:
                await tx.execute("INSERT INTO counters (key, n) VALUES (?, ?)", f"k{i}", i)
                if i % 7 == 3:
                    raise ValueError(f"unit {i}")
                return i
            return run

        outcomes = await asyncio.gather(*[db.run(unit(i)) for i in range(50)],
                                        return_exceptions=True)
        for i, outcome in enumerate(outcomes):
            if i % 7 == 3:
                assert isinstance(outcome, ValueError) and str(outcome) == f"unit {i}"
            else:
                assert outcome == i
        rows = await db.fetch("SELECT key FROM counters")
        assert sorted(r["key"] for r in rows) == sorted(f"k{i}" for i in range(50)
                                                        if i % 7 != 3)
        # a unit breaking a constraint fails alone too, and the queue goes on
        again = await asyncio.gather(db.run(unit(0)), db.run(unit(100)),
                                     return_exceptions=True)
        assert isinstance(again[0], Exception) and again[1] == 100
        # the first unit of a transaction (run without a savepoint) is undone alone too
        first = await asyncio.gather(db.run(unit(101)), db.run(unit(102)),
                                     return_exceptions=True)
        assert isinstance(first[0], ValueError) and first[1] == 102
        assert await db.fetchone("SELECT * FROM counters WHERE key = ?", "k101") is None
        assert await db.fetchval("SELECT n FROM counters WHERE key = ?", "k102") == 102

    with_db(store, schema_name, test)


def test_a_submitted_unit_is_queued_at_once_and_its_future_has_the_outcome(
        store: StoreURL, schema_name: str) -> None:
    """``submit``: the unit is queued when it is called (on SQLite, no task: a unit run after
    it sees what it wrote), and the future it returns has its result, or its exception."""
    async def test(db: Database) -> None:
        async def fails(tx: Tx) -> None:
            await tx.execute("INSERT INTO counters (key, n) VALUES (?, ?)", "gone", 1)
            raise ValueError("no")

        first = db.submit(_increment, brief=True)
        if db.dialect == "sqlite":
            assert not isinstance(first, asyncio.Task)
            assert await db.run(_increment) == 2
        assert await first == 1
        with pytest.raises(ValueError, match="no"):
            await db.submit(fails)
        assert await db.fetchone("SELECT * FROM counters WHERE key = ?", "gone") is None

    with_db(store, schema_name, test)


def test_a_unit_submitted_to_an_inline_store_has_landed_when_it_returns(
        tmp_path: Path) -> None:
    async def main() -> None:
        db = SQLiteDatabase(tmp_path / "t.db", inline=True)
        await db.open(SCHEMA)
        try:
            landed = db.submit(_increment)
            assert landed.done() and landed.result() == 1
        finally:
            await db.close()

    asyncio.run(main())


@pytest.mark.parametrize("brief", [False, True])
def test_a_unit_queued_just_before_close_still_runs(tmp_path: Path, brief: bool) -> None:
    """close() right after a unit was queued (its wake-up of the store thread, or its run on
    the loop, not due yet): the unit runs and its caller gets its result, nothing is left
    behind."""
    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"))
        await db.open(SCHEMA)
        task = asyncio.ensure_future(db.run(_increment, brief=brief))
        await asyncio.sleep(0)  # the unit is queued; the wake-up waits for the next iteration
        await db.close()
        assert await task == 1
        await asyncio.sleep(0.05)  # the late wake-up finds a closed store: no error
        check = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                          label="[t] store"))
        await check.open(SCHEMA)
        try:
            assert await check.fetchval("SELECT n FROM counters WHERE key = ?", "a") == 1
        finally:
            await check.close()

    asyncio.run(main())


@pytest.mark.parametrize("brief", [False, True])
def test_a_deferred_unit_rides_with_the_next_one_or_lands_on_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, brief: bool) -> None:
    """``defer=True`` on SQLite: the unit waits, queued, for the next unit's wake-up of the
    store thread (or run on the loop, for brief units) and lands in its transaction, before
    it (units never overtake one another); with nothing else coming it lands after
    DEFER_MAX; close() runs one still waiting."""
    import midway.storage.database as database

    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"))
        await db.open(SCHEMA)
        monkeypatch.setattr(database, "DEFER_MAX", 60.0)
        deferred = asyncio.ensure_future(db.run(_increment, defer=True, brief=brief))
        await asyncio.sleep(0.05)  # nothing else queued: it waits (no timer is due yet)
        assert not deferred.done()
        # the next unit carries it along, and sees what it wrote
        assert await db.run(_increment, brief=brief) == 2
        assert deferred.done() and deferred.result() == 1
        # alone, it lands after DEFER_MAX
        monkeypatch.setattr(database, "DEFER_MAX", 0.01)
        assert await asyncio.wait_for(db.run(_increment, defer=True, brief=brief), 10) == 3
        # still waiting at close(): it runs, its caller gets its result
        monkeypatch.setattr(database, "DEFER_MAX", 60.0)
        last = asyncio.ensure_future(db.run(_increment, defer=True, brief=brief))
        await asyncio.sleep(0)
        await db.close()
        assert await last == 4

    asyncio.run(main())


def test_deferred_units_share_one_timer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """The timer a deferred unit arms is not cancelled by the drain that carries that unit: a
    deferred unit queued before it runs out is left to that same timer, which, firing before
    that unit has waited DEFER_MAX, is armed again for when it has (a unit coming meanwhile
    may still carry it). A timer due later than DEFER_MAX from now is replaced."""
    import midway.storage.database as database

    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"))
        await db.open(SCHEMA)
        assert isinstance(db, SQLiteDatabase)
        loop = asyncio.get_running_loop()
        try:
            monkeypatch.setattr(database, "DEFER_MAX", 60.0)
            first = asyncio.ensure_future(db.run(_increment, defer=True, brief=True))
            await asyncio.sleep(0)
            timer = db._deferred
            assert timer is not None
            assert await db.run(_increment, brief=True) == 2  # carries the deferred one
            assert await first == 1
            assert db._deferred is timer and not timer.cancelled()
            second = asyncio.ensure_future(db.run(_increment, defer=True, brief=True))
            await asyncio.sleep(0)
            queued_at = loop.time()
            assert db._deferred is timer and not second.done()
            timer.cancel()
            db._drain_deferred(loop)  # as if it fired now, before the second unit is due
            again = db._deferred
            assert again is not None and again is not timer and not second.done()
            assert queued_at < again.when() <= queued_at + 60.0
            monkeypatch.setattr(database, "DEFER_MAX", 0.01)
            third = asyncio.ensure_future(db.run(_increment, defer=True, brief=True))
            await asyncio.sleep(0)
            assert db._deferred is not again and again.cancelled()
            assert await asyncio.wait_for(asyncio.gather(second, third), 10) == [3, 4]
        finally:
            await db.close()

    asyncio.run(main())


def test_a_sqlite_unit_that_awaits_anything_but_its_tx_fails_alone(tmp_path: Path) -> None:
    """Units run on the store's thread without an event loop: one that awaits something else
    fails with a RuntimeError saying so, its writes rolled back; alone or in a group, the
    units beside it commit, and the store goes on."""
    async def wanders(tx: Tx) -> None:
        await tx.execute("INSERT INTO counters (key, n) VALUES (?, ?)", "stray", 1)
        await asyncio.sleep(0)

    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"))
        await db.open(SCHEMA)
        try:
            with pytest.raises(RuntimeError, match="only talk to its tx"):
                await db.run(wanders)
            # in one group with others (queued in the same loop iteration)
            results = await asyncio.gather(db.run(_increment), db.run(wanders),
                                           db.run(_increment), return_exceptions=True)
            assert results[0] == 1 and results[2] == 2
            assert isinstance(results[1], RuntimeError)
            assert await db.fetchval("SELECT count(*) FROM counters WHERE key = ?",
                                     "stray") == 0
            assert await db.run(_increment) == 3
        finally:
            await db.close()

    asyncio.run(main())


def _threads_of(units: list[int]) -> Callable[[Tx], Awaitable[int]]:
    """_increment, noting the thread that ran it."""
    async def unit(tx: Tx) -> int:
        units.append(threading.get_ident())
        return await _increment(tx)
    return unit


def test_brief_units_run_on_the_loop_while_the_database_is_free(tmp_path: Path) -> None:
    """A brief unit runs on the loop's thread (no hop to the store thread and back) when the
    write lock is free at once; while another connection holds it, the unit goes to the
    store thread, which waits for the lock as it always did, and the loop stays free. Units
    never overtake one another: a brief unit queued after one the store thread holds runs
    after it. More than a few queued at once go to the store thread together."""
    path = tmp_path / "t.db"

    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"))
        await db.open(SCHEMA)
        loop_thread = threading.get_ident()
        ran: list[int] = []
        try:
            assert await db.run(_threads_of(ran), brief=True) == 1
            assert await db.run(_threads_of(ran)) == 2  # not brief: the store thread
            assert ran[0] == loop_thread and ran[1] != loop_thread
            store_thread = ran[1]

            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process writing, say
            ran.clear()
            first = asyncio.ensure_future(db.run(_threads_of(ran), brief=True))
            second = asyncio.ensure_future(db.run(_threads_of(ran), brief=True))
            # the loop goes on meanwhile (the store thread waits for the lock)
            for _ in range(20):
                await asyncio.sleep(0.005)
            assert not first.done() and not second.done()
            other.execute("COMMIT")
            other.close()
            assert await first == 3 and await second == 4
            assert ran == [store_thread, store_thread]
            # The store thread lets the drain go just after it delivered those outcomes (a
            # unit queued before then joins its queue, as it should): wait for that.
            for _ in range(2000):
                if not db._draining:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.001)  # a thread's state; nothing to wait on instead
            # the lock is free again: back on the loop
            assert await db.run(_threads_of(ran), brief=True) == 5
            assert ran[-1] == loop_thread
            # many queued at once (load): one hop shares them, on the store thread
            ran.clear()
            await asyncio.gather(*(db.run(_threads_of(ran), brief=True) for _ in range(20)))
            assert ran == [store_thread] * 20
        finally:
            await db.close()

    asyncio.run(main())


@pytest.mark.parametrize("on_loop", [True, False])
def test_brief_units_queued_together_run_without_savepoints_and_still_fail_alone(
        tmp_path: Path, on_loop: bool) -> None:
    """A group of brief units runs with no savepoint (SQLite would copy every page each
    unit changes to a statement journal); if one of them raises, the group is undone and
    runs again unit by unit: that one fails alone, the others land once — on the loop's
    connection and on the store thread's alike. A brief unit queued alone that raises runs
    once."""
    path = tmp_path / "t.db"
    runs: list[int] = []

    def unit(i: int) -> Callable[[Tx], Awaitable[int]]:
        async def run(tx: Tx) -> int:
            runs.append(i)
            n = await _increment(tx)
            if i == 3:
                raise ValueError("unit 3")
            return n
        return run

    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"))
        await db.open(SCHEMA)
        assert isinstance(db, SQLiteDatabase)
        statements: list[str] = []
        for conn in (db._conn, db._fast):
            assert conn is not None
            conn.set_trace_callback(statements.append)
        other = None
        try:
            if not on_loop:  # the lock taken: the group goes to the store thread
                other = sqlite3.connect(path, isolation_level=None)
                other.execute("BEGIN IMMEDIATE")
            group = [asyncio.ensure_future(db.run(unit(i), brief=True)) for i in (1, 2)]
            if other is not None:
                await asyncio.sleep(0.02)
                other.execute("COMMIT")
            assert await asyncio.gather(*group) == [1, 2]
            assert runs == [1, 2]
            assert not [s for s in statements if "SAVEPOINT" in s]
            runs.clear()
            if not on_loop:
                assert other is not None
                other.execute("BEGIN IMMEDIATE")
            outcomes = [asyncio.ensure_future(db.run(unit(i), brief=True)) for i in (2, 3, 4)]
            if other is not None:
                await asyncio.sleep(0.02)
                other.execute("COMMIT")
            results = await asyncio.gather(*outcomes, return_exceptions=True)
            assert results[0] == 3 and isinstance(results[1], ValueError) and results[2] == 4
            assert runs == [2, 3, 2, 3, 4]  # undone at 3, then again with savepoints
            assert await db.fetchval("SELECT n FROM counters WHERE key = ?", "a") == 4
            runs.clear()
            if not on_loop:
                assert other is not None
                other.execute("BEGIN IMMEDIATE")
            alone = asyncio.ensure_future(db.run(unit(3), brief=True))
            if other is not None:
                await asyncio.sleep(0.02)
                other.execute("COMMIT")
            with pytest.raises(ValueError, match="unit 3"):
                await alone
            assert runs == [3]  # alone, it is not run again: it would only fail again
            assert await db.fetchval("SELECT n FROM counters WHERE key = ?", "a") == 4
        finally:
            if other is not None:
                other.close()
            await db.close()

    asyncio.run(main())


def test_a_held_unit_shares_its_commit_with_the_unit_its_caller_queues_next(
        tmp_path: Path) -> None:
    """A held brief unit's caller learns its outcome before the commit; the brief unit it
    queues on learning it runs in the same transaction, and both land in one commit, which
    another connection sees whole or not at all. A held unit nobody follows commits alone
    an iteration later. A unit in the same transaction that was not held learns its outcome
    once it commits. If a joined unit raises, the transaction is undone (the held unit's
    effect too, as documented), the joined unit fails alone, a unit not held runs again and
    lands; the next ones land."""
    path = tmp_path / "t.db"

    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"))
        await db.open(SCHEMA)
        assert isinstance(db, SQLiteDatabase)
        commits: list[str] = []
        assert db._fast is not None
        db._fast.set_trace_callback(
            lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        other = sqlite3.connect(path, isolation_level=None)

        def seen() -> int:
            row = other.execute("SELECT n FROM counters WHERE key = 'a'").fetchone()
            return 0 if row is None else int(row[0])

        try:
            assert await db.run(_increment, brief=True, hold=True) == 1
            assert seen() == 0  # not committed yet: the caller may queue its next unit
            assert await db.run(_increment, brief=True) == 2
            assert seen() == 2 and commits == ["COMMIT"]  # both in one commit

            commits.clear()
            assert await db.run(_increment, brief=True, hold=True) == 3
            await asyncio.sleep(0)  # nothing follows it: it commits alone
            assert seen() == 3 and commits == ["COMMIT"]

            async def fails(tx: Tx) -> int:
                await _increment(tx)
                raise ValueError("joined")

            # A unit not held, in the same transaction: told once it commits, not before.
            plain = db.submit(_increment, brief=True)
            assert await db.run(_increment, brief=True, hold=True) == 5
            assert not plain.done() and seen() == 3
            assert await plain == 4 and seen() == 5

            assert await db.run(_increment, brief=True, hold=True) == 6
            with pytest.raises(ValueError, match="joined"):
                await db.run(fails, brief=True)
            assert seen() == 5  # undone with the transaction it joined
            assert await db.run(_increment, brief=True) == 6
            assert seen() == 6

            # Undone with it, a unit not held runs again, and is told its own outcome.
            plain = db.submit(_increment, brief=True)
            assert await db.run(_increment, brief=True, hold=True) == 8
            with pytest.raises(ValueError, match="joined"):
                await db.run(fails, brief=True)
            assert await plain == 7 and seen() == 7
        finally:
            other.close()
            await db.close()

    asyncio.run(main())


def test_a_held_commit_that_fails_is_counted_and_the_other_units_land(
        tmp_path: Path) -> None:
    """Should a held transaction's commit fail (SQLite refuses it), ``held_lost`` grows and
    ``held_error`` is why, before the units in it run again: the held unit's effect is lost
    (its caller was told), a unit that rode along and the one that joined land, alone."""
    path = tmp_path / "t.db"

    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"))
        await db.open(SCHEMA)
        assert isinstance(db, SQLiteDatabase) and db._fast is not None
        fast = db._fast
        other = sqlite3.connect(path, isolation_level=None)
        refused: list[str] = []
        seen_lost: list[int] = []

        def refuse_a_commit(action: int, arg: str | None, *_: Any) -> int:
            if action == sqlite3.SQLITE_TRANSACTION and arg == "COMMIT" and not refused:
                refused.append(arg)
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        async def joined(tx: Tx) -> int:
            seen_lost.append(db.held_lost)
            return await _increment(tx)

        try:
            plain = db.submit(_increment, brief=True)
            assert await db.run(_increment, brief=True, hold=True) == 2
            assert db.held_lost == 0 and db.held_error is None
            fast.set_authorizer(refuse_a_commit)  # (a real SQLite error, at the commit)
            assert await db.run(joined, brief=True) == 2  # run again, after plain
            assert refused == ["COMMIT"] and seen_lost == [0, 1]
            assert db.held_lost == 1 and isinstance(db.held_error, sqlite3.DatabaseError)
            assert await plain == 1
            row = other.execute("SELECT n FROM counters WHERE key = 'a'").fetchone()
            assert row == (2,)  # plain's and joined's: the held unit's is lost
        finally:
            fast.set_authorizer(None)
            other.close()
            await db.close()

    asyncio.run(main())


def test_a_held_unit_commits_when_the_database_closes(tmp_path: Path) -> None:
    """A transaction held open when the database closes commits first."""
    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"))
        await db.open(SCHEMA)
        assert await db.run(_increment, brief=True, hold=True) == 1
        await db.close()
        other = sqlite3.connect(tmp_path / "t.db")
        try:
            assert other.execute("SELECT n FROM counters").fetchone() == (1,)
        finally:
            other.close()

    asyncio.run(main())


def test_without_rowid_tables_on_sqlite_only_and_only_when_created(tmp_path: Path) -> None:
    """``{without_rowid}`` makes a new SQLite table a WITHOUT ROWID one (PostgreSQL has no
    such thing); a table created before, as a rowid table, is left so and works as ever."""
    keyed = Schema("keyed", "CREATE TABLE IF NOT EXISTS holds (key TEXT PRIMARY KEY, "
                            "n {int} NOT NULL DEFAULT 0){without_rowid}")
    assert keyed.statements("sqlite")[0].endswith(") WITHOUT ROWID")
    assert keyed.statements("postgresql")[0].endswith("DEFAULT 0)")
    assert keyed.tables() == {"holds": {"key": "TEXT", "n": "INTEGER NOT NULL DEFAULT 0"}}
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE holds (key TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0)")
    conn.close()

    async def main() -> None:
        for name, without in (("new.db", True), ("old.db", False)):
            db = open_database(parse_store(name, data_dir=tmp_path, default_file=name,
                                           label="[t] store"))
            await db.open(keyed)
            try:
                sql = await db.fetchval("SELECT sql FROM sqlite_master WHERE name = 'holds'")
                assert sql.endswith("WITHOUT ROWID") == without
                await db.execute("INSERT INTO holds (key, n) VALUES (?, ?)", "a", 1)
                await db.run(lambda tx: tx.execute(
                    "UPDATE holds SET n = n + 1 WHERE key = ?", "a"), brief=True)
                assert await db.fetchval("SELECT n FROM holds WHERE key = ?", "a") == 2
            finally:
                await db.close()

    asyncio.run(main())


def test_brief_units_stay_on_the_store_thread_with_synchronous_full(tmp_path: Path) -> None:
    """With ``synchronous="full"`` every commit fsyncs: never on the loop."""
    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"), synchronous="full")
        await db.open(SCHEMA)
        ran: list[int] = []
        try:
            assert await db.run(_threads_of(ran), brief=True) == 1
            assert ran == [ran[0]] and ran[0] != threading.get_ident()
        finally:
            await db.close()

    asyncio.run(main())


def test_commits_on_the_loop_are_checkpointed_by_the_store_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's connection never checkpoints (an fsync): the store thread does, every so
    many of its commits, so the WAL is copied into the database file as SQLite's own
    automatic checkpoint would — and then starts over, instead of growing with every
    commit."""
    import midway.storage.database as database

    for name in ("_CHECKPOINT_FIRST", "_CHECKPOINT_MIN", "_CHECKPOINT_MAX"):
        monkeypatch.setattr(database, name, 4)
    path = tmp_path / "t.db"
    wal = tmp_path / "t.db-wal"

    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"))
        await db.open(SCHEMA)
        try:
            before = path.stat().st_size
            for i in range(8):  # a page or so each, written to the WAL only
                await db.run(lambda tx, i=i: tx.execute(
                    "INSERT INTO counters (key, n) VALUES (?, ?)", f"{i}" + "k" * 3000, i),
                    brief=True)
            wait_for(lambda: path.stat().st_size > before + 8 * 3000)
            for i in range(200):  # the same row over and over: a few pages a commit
                await db.run(lambda tx, i=i: tx.execute(
                    "UPDATE counters SET n = ? WHERE key = ?", i, "0" + "k" * 3000),
                    brief=True)
            # without starting over, 200 commits would leave a WAL of >= 200 pages
            assert wal.stat().st_size < 50 * 4096
        finally:
            await db.close()

    asyncio.run(main())


def test_a_sqlite_connection_keeps_a_small_page_cache(tmp_path: Path) -> None:
    """256 KiB of page cache per connection, not SQLite's 2 MiB: the stores mostly write."""
    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"))
        await db.open(SCHEMA)
        try:
            assert await db.fetchval("PRAGMA cache_size") == -256
        finally:
            await db.close()

    asyncio.run(main())


def test_statement_helpers(store: StoreURL, schema_name: str) -> None:
    async def test(db: Database) -> None:
        await db.executemany("INSERT INTO counters (key, n) VALUES (?, ?)", [("x", 1), ("y", 2)])
        assert await db.execute("UPDATE counters SET n = n + 10") == 2
        rows = await db.fetch("SELECT key, n FROM counters ORDER BY key")
        assert rows == [{"key": "x", "n": 11}, {"key": "y", "n": 12}]
        assert await db.fetchone("SELECT n FROM counters WHERE key = ?", "nope") is None

    with_db(store, schema_name, test)


def test_a_unit_that_need_not_be_durable(store: StoreURL, schema_name: str) -> None:
    """``durable=False`` relaxes that one commit (no fsync / no WAL flush wait), then the
    store's own level is back; the unit still commits."""
    async def main() -> None:
        db = open_database(store, schema=schema_name, synchronous="full")
        await db.open(SCHEMA)
        try:
            show = "PRAGMA synchronous" if db.dialect == "sqlite" else "SHOW synchronous_commit"

            async def level(tx: Tx) -> str:
                await tx.execute("INSERT INTO counters (key, n) VALUES (?, 1) "
                                 "ON CONFLICT (key) DO UPDATE SET n = counters.n + 1", "k")
                return str(await tx.fetchval(show))

            levels = [await db.run(level), await db.run(level, durable=False),
                      await db.run(level)]
            full, relaxed = ("2", "1") if db.dialect == "sqlite" else ("on", "off")
            assert levels == [full, relaxed, full]
            assert await db.fetchval("SELECT n FROM counters WHERE key = ?", "k") == 3
        finally:
            await db.close()

    asyncio.run(main())


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_the_sqlite_level_is_switched_only_when_a_unit_needs_the_other(
        tmp_path: Path, synchronous: str) -> None:
    """With ``synchronous="full"`` a unit that need not be durable commits at NORMAL and a
    durable one at FULL, but a run of either issues no PRAGMA until the other comes; with
    ``"normal"`` every unit commits at NORMAL, no PRAGMA at all."""
    async def main() -> None:
        db = open_database(parse_store("sqlite", data_dir=tmp_path, default_file="t.db",
                                       label="[t] store"), synchronous=synchronous)
        await db.open(SCHEMA)
        statements: list[str] = []
        assert isinstance(db, SQLiteDatabase) and db._conn is not None
        db._conn.set_trace_callback(statements.append)
        try:
            async def level(tx: Tx) -> int:
                await tx.execute("INSERT INTO counters (key, n) VALUES (?, 1) "
                                 "ON CONFLICT (key) DO UPDATE SET n = counters.n + 1", "k")
                return int(await tx.fetchval("PRAGMA synchronous"))

            durable = [False, False, False, True, True, False, True]
            levels = [await db.run(level, durable=d) for d in durable]
            pragmas = [s for s in statements if s.startswith("PRAGMA synchronous=")]
        finally:
            await db.close()
        if synchronous == "full":
            assert levels == [2 if d else 1 for d in durable]
            assert pragmas == ["PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL",
                               "PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL"]
        else:
            assert levels == [1] * len(durable) and pragmas == []

    asyncio.run(main())


def test_migration_adds_columns_and_indexes(store: StoreURL, schema_name: str) -> None:
    async def test(db: Database) -> None:
        await db.execute("INSERT INTO counters (key, n) VALUES (?, ?)", "old", 7)
        await db.close()
        again = open_database(db.store, schema=schema_name)
        changes = await again.open(SCHEMA_V2)
        # PostgreSQL builds the new index on the existing table concurrently, after the rest
        built = [f"{_where(again)}: built index counters_note on counters"] \
            if again.dialect == "postgresql" else []
        assert changes == [f"{_where(again)}: added column(s) note, weight to counters", *built]
        row = await again.fetchone("SELECT * FROM counters WHERE key = ?", "old")
        assert row == {"key": "old", "n": 7, "note": None, "weight": 1}
        await again.close()
        third = open_database(db.store, schema=schema_name)
        assert await third.open(SCHEMA_V2) == []  # idempotent
        await third.close()

    with_db(store, schema_name, test)


def test_check_and_upgrade_from_outside(tmp_path: Path, postgres_dsn: str, schema_name: str
                                        ) -> None:
    async def test() -> None:
        store = parse_store(postgres_dsn, data_dir=tmp_path, default_file="t.db",
                            label="[t] store")
        where = f"PostgreSQL {store.masked}"
        problems = await check_store(store, SCHEMA, label="[t] store", pg_schema=schema_name)
        assert problems == [f"[t] store: {where}: schema '{schema_name}' does not exist; "
                            "run `midway db upgrade`"]
        assert await upgrade_store(store, SCHEMA, label="[t] store", pg_schema=schema_name) == [
            f"{where}: created table counters"]
        problems = await check_store(store, SCHEMA_V2, label="[t] store", pg_schema=schema_name)
        assert problems == [f"[t] store: {where}: table counters is older than this "
                            "version (no column note, weight); run `midway db upgrade`"]
        await upgrade_store(store, SCHEMA_V2, label="[t] store", pg_schema=schema_name)
        assert await check_store(store, SCHEMA_V2, label="[t] store", pg_schema=schema_name) == []

    asyncio.run(test())


def test_check_reports_unreachable_and_unusable_stores(tmp_path: Path) -> None:
    async def test() -> None:
        store = parse_store("postgresql://postgres:pw@127.0.0.1:9/test", data_dir=tmp_path,
                            default_file="t.db", label="[t] store")
        [problem] = await check_store(store, SCHEMA, label="[t] store")
        assert problem.startswith("[t] store: PostgreSQL postgresql://postgres:***@127.0.0.1:9/test"
                                  ": unreachable")
        (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
        store = parse_store("junk.db", data_dir=tmp_path, default_file="t.db", label="[t] store")
        [problem] = await check_store(store, SCHEMA, label="[t] store")
        assert "not a usable SQLite database" in problem
        missing = parse_store("no/such/dir/t.db", data_dir=tmp_path, default_file="t.db",
                              label="[t] store")
        assert await check_store(missing, SCHEMA, label="[t] store") == []
        assert not (tmp_path / "no").exists()  # a check creates nothing

    asyncio.run(test())


def test_liveness_tells_live_from_dead(store: StoreURL, schema_name: str) -> None:
    async def test(db: Database) -> None:
        mine, theirs = liveness(db, "smoke"), liveness(db, "smoke")
        a, b = new_instance(), new_instance()
        await mine.claim(a)
        await theirs.claim(b)
        async with mine.dead(b) as gone:
            assert not gone
        async with theirs.dead(a) as gone:
            assert not gone
        await theirs.release()
        async with mine.dead(b) as gone:
            assert gone
            other = liveness(db, "smoke")  # while one peer finishes b's work, no other peer does
            async with other.dead(b) as also:
                assert not also
        async with mine.dead(new_instance()) as gone:
            assert gone  # never seen: nobody holds it
        async with mine.dead(a) as gone:
            assert not gone  # itself
        await mine.release()

    with_db(store, schema_name, test)


def test_a_postgresql_liveness_session_is_probed_so_a_lost_machine_frees_its_lock(
        postgres_dsn: str, schema_name: str, tmp_path: Path) -> None:
    store = parse_store(postgres_dsn, data_dir=tmp_path, default_file="t.db", label="[t] store")

    async def keepalives(conn: Any) -> dict[str, int]:
        rows = await conn.fetch("SELECT name, setting FROM pg_settings "
                                "WHERE name LIKE 'tcp_keepalives_%' OR name = 'tcp_user_timeout'")
        return {row["name"]: int(row["setting"]) for row in rows}

    async def test(db: Database) -> None:
        live = liveness(db, "smoke", interval=0.05)
        await live.claim(new_instance())
        try:
            assert await keepalives(live._conn) == KEEPALIVES  # type: ignore[attr-defined]
            # the session taken again after it was lost is probed too
            pid = await live._conn.fetchval("SELECT pg_backend_pid()")  # type: ignore[attr-defined]
            conn = await db.connect()
            try:
                await conn.execute("SELECT pg_terminate_backend($1)", pid)
            finally:
                await conn.close()
            deadline = time.monotonic() + 10
            while live.reclaims == 0:  # type: ignore[attr-defined]
                assert time.monotonic() < deadline, "the lock was not taken again"
                await asyncio.sleep(0.01)
            assert await keepalives(live._conn) == KEEPALIVES  # type: ignore[attr-defined]
        finally:
            await live.release()

    with_db(store, schema_name, test)


def test_retrying_lands_after_transient_failures_and_logs_once(
        caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        attempts = 0

        async def work() -> str:
            nonlocal attempts
            attempts += 1
            if attempts < 5:
                raise sqlite3.OperationalError("database is locked")
            return "landed"

        log = logging.getLogger("test.retry")
        with caplog.at_level(logging.WARNING, "test.retry"):
            assert await retrying(work, what="settling x", log=log, first_delay=0.001) == "landed"
        assert attempts == 5
        assert [r.getMessage() for r in caplog.records] == [
            "settling x failed (database is locked); retrying for up to 60 s",
            caplog.records[1].getMessage()]
        assert caplog.records[1].getMessage().startswith("settling x works again after 4 failed")

        async def broken() -> None:
            raise ValueError("a bug, not an outage")

        with pytest.raises(ValueError):
            await retrying(broken, what="x", log=log)

        async def never() -> None:
            raise ConnectionRefusedError(111, "Connection refused")

        with pytest.raises(ConnectionRefusedError):
            await retrying(never, what="x", log=log, deadline=0.05, first_delay=0.01)

    asyncio.run(test())


def test_a_pool_reconnecting_to_a_stopped_postgres_logs_one_line_not_a_traceback(
        private_postgres: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        db = open_database(parse_store(private_postgres.dsn, data_dir=Path("/nonexistent"),
                                       default_file="p.db", label="smoke"), label="smoke")
        await db.open(SCHEMA)
        try:
            private_postgres.stop("immediate")
            with pytest.raises(Exception):  # whichever of asyncpg's errors a lost server is
                await db.fetchval("SELECT 1")
            # the pool now tries to restore its floor of one connection, and fails
            for _ in range(500):
                if any(r.name == "asyncpg.pool" for r in caplog.records):
                    break
                await asyncio.sleep(0.01)  # the pool's own retry has no signal to wait on
        finally:
            await db.close()

    with caplog.at_level(logging.WARNING, logger="asyncpg.pool"):
        asyncio.run(scenario())
    pool_lines = [r for r in caplog.records if r.name == "asyncpg.pool"]
    assert pool_lines, "the pool never logged its reconnection"
    for record in pool_lines:
        assert record.exc_info is None
        assert "retrying (" in record.getMessage(), record.getMessage()


SCHEMA_INDEXED = Schema("smoke", SCHEMA.ddl + ";\nCREATE INDEX IF NOT EXISTS counters_n_key ON "
                        "counters (n, key);\nDROP INDEX IF EXISTS counters_n")


def test_a_new_index_on_a_live_postgres_table_lets_writes_go_on(
        postgres_dsn: str, pg_schema: str, tmp_path: Path) -> None:
    """An upgrade adding an index to a table others write to: while it waits for a writer's
    open transaction, other writers are not held off (a plain CREATE INDEX would queue its
    lock and every INSERT behind it); the index is built and the one it replaces dropped."""
    import asyncpg

    store = parse_store(postgres_dsn, data_dir=tmp_path, default_file="t.db", label="[t] store")

    async def test() -> None:
        db = open_database(store, schema=pg_schema)
        await db.open(SCHEMA)
        await db.close()
        writer = await asyncpg.connect(postgres_dsn, server_settings={"search_path": pg_schema})
        other = await asyncpg.connect(postgres_dsn, server_settings={"search_path": pg_schema})
        upgraded = open_database(store, schema=pg_schema)
        try:
            open_tx = writer.transaction()
            await open_tx.start()
            await writer.execute("INSERT INTO counters (key, n) VALUES ('open', 1)")
            upgrade = asyncio.create_task(upgraded.open(SCHEMA_INDEXED))
            for _ in range(1000):  # until the build waits for the open transaction
                if await other.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX%' "
                        "AND wait_event_type = 'Lock'"):
                    break
                assert not upgrade.done(), upgrade
                await asyncio.sleep(0.01)  # the server's state; nothing to wait on instead
            else:
                raise AssertionError("the upgrade never reached its index build")
            await other.execute("SET lock_timeout = '2s'")
            await other.execute("INSERT INTO counters (key, n) VALUES ('meanwhile', 2)")
            await open_tx.commit()
            changes = await asyncio.wait_for(upgrade, 30)
            where = f"PostgreSQL {store.masked}"
            assert changes == [f"{where}: built index counters_n_key on counters",
                               f"{where}: dropped index counters_n"]
            indexes = {r[0]: r[1] for r in await other.fetch(
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = "
                "i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1", pg_schema)}
            assert indexes == {"counters_pkey": True, "counters_n_key": True}
        finally:
            await upgraded.close()
            await writer.close()
            await other.close()

    asyncio.run(test())


def test_an_index_a_failed_concurrent_build_left_invalid_is_built_again(
        postgres_dsn: str, pg_schema: str, tmp_path: Path) -> None:
    import asyncpg

    store = parse_store(postgres_dsn, data_dir=tmp_path, default_file="t.db", label="[t] store")

    async def test() -> None:
        db = open_database(store, schema=pg_schema)
        await db.open(SCHEMA)
        await db.execute("INSERT INTO counters (key, n) VALUES ('a', 1), ('b', 1)")
        conn = await asyncpg.connect(postgres_dsn, server_settings={"search_path": pg_schema})
        try:
            # a unique build over duplicates fails and leaves its index behind, invalid
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute("CREATE UNIQUE INDEX CONCURRENTLY counters_n_key "
                                   "ON counters (n)")
            await db.close()
            again = open_database(store, schema=pg_schema)
            changes = await again.open(SCHEMA_INDEXED)
            await again.close()
            assert f"PostgreSQL {store.masked}: built index counters_n_key on counters" in changes
            valid = await conn.fetchval(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND "
                "c.relname = 'counters_n_key'", pg_schema)
            assert valid is True
            # and the duplicates are allowed again: it is the script's index, not the failed one
            assert await conn.fetchval("SELECT count(*) FROM counters WHERE n = 1") == 2
        finally:
            await conn.close()

    asyncio.run(test())


def test_an_instance_starting_during_an_online_index_build_waits_without_deadlock(
        postgres_dsn: str, pg_schema: str, tmp_path: Path) -> None:
    """A second instance starting while the first builds an index concurrently waits for the
    schema lock without holding a snapshot: the build waits for every older snapshot, so a
    waiter blocked inside ``pg_advisory_lock`` deadlocked with it (PostgreSQL then killed one,
    failing that instance's start-up)."""
    import asyncpg

    store = parse_store(postgres_dsn, data_dir=tmp_path, default_file="t.db", label="[t] store")

    async def test() -> None:
        db = open_database(store, schema=pg_schema)
        await db.open(SCHEMA)
        await db.close()
        writer = await asyncpg.connect(postgres_dsn, server_settings={"search_path": pg_schema})
        watcher = await asyncpg.connect(postgres_dsn)
        first, second = (open_database(store, schema=pg_schema) for _ in range(2))
        try:
            open_tx = writer.transaction()
            await open_tx.start()
            await writer.execute("INSERT INTO counters (key, n) VALUES ('open', 1)")
            building = asyncio.create_task(first.open(SCHEMA_INDEXED))
            waiting: asyncio.Task[list[str]] | None = None
            for _ in range(1000):  # the build waits for the open transaction; then the second
                activity = [r[0] for r in await watcher.fetch(
                    "SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
                    "(query LIKE 'CREATE INDEX%' AND wait_event_type = 'Lock' OR "
                    "query LIKE '%advisory_lock(hashtext%')")]
                if waiting is None and any(q.startswith("CREATE INDEX") for q in activity):
                    waiting = asyncio.create_task(second.open(SCHEMA_INDEXED))
                elif waiting is not None and any("advisory_lock" in q for q in activity):
                    break  # the second instance has asked for the schema lock
                assert not building.done(), building
                await asyncio.sleep(0.01)  # the server's state; nothing to wait on instead
            else:
                raise AssertionError("the two upgrades never met")
            await open_tx.commit()
            assert waiting is not None
            built, nothing = await asyncio.wait_for(asyncio.gather(building, waiting), 60)
            assert f"PostgreSQL {store.masked}: built index counters_n_key on counters" in built
            assert nothing == []
        finally:
            await first.close()
            await second.close()
            await writer.close()
            await watcher.close()

    asyncio.run(test())
