"""The SQL store on SQLite and on the shared PostgreSQL (a schema of its own per test):
entries, LRU eviction by count and bytes, counters, fill locks, clear and purge; and the
``store`` spellings the cache accepts."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from midway.config import ConfigError
from midway.options import load_table
from midway_cache.config import CacheConfig
from midway_cache.stores import Entry, make_store
from midway_cache.stores.sql import SQLStore

PG = "postgresql://postgres@127.0.0.1:5432/test"

Job = Callable[[SQLStore], Awaitable[Any]]


def cache_config(data_dir: Path, **table: Any) -> CacheConfig:
    return load_table(CacheConfig, "cache", table, data_dir=data_dir)


@pytest.fixture(params=["sqlite", "postgres"])
def with_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``with_store(job, **settings)``: run ``job(store)`` on a freshly opened store."""
    schema = f"t_cache_sql_{secrets.token_hex(4)}"
    spec = PG if request.param == "postgres" else "sqlite"

    def run(job: Job, **settings: Any) -> Any:
        async def go() -> Any:
            store = make_store(cache_config(tmp_path, store=spec, schema=schema, **settings))
            assert isinstance(store, SQLStore)
            await store.open()
            try:
                return await job(store)
            finally:
                await store.close()

        return asyncio.run(go())

    yield run
    if request.param == "postgres":
        async def drop() -> None:
            db = await asyncpg.connect(PG)
            await db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await db.close()

        asyncio.run(drop())


def entry(key: str, at: float, tenant: str = "principal:a", text: str = "x",
          expires_at: float | None = None) -> Entry:
    message = {"type": "message", "content": [{"type": "text", "text": text}],
               "usage": {"input_tokens": 3, "output_tokens": 4}}
    return Entry(key=key, tenant=tenant, message=message, created_at=at, expires_at=expires_at,
                 partition="p", prompt="q", vector=b"\0\0\x80?", cost_usd="0.01")


def test_put_get_replace_and_counters(with_store):
    async def job(store: SQLStore) -> None:
        await store.put(entry("k1", 100.0))
        await store.put(entry("k1", 101.0, text="newer"))  # replaces, counted once
        got = await store.get("k1", 102.0)
        assert got is not None and got.message["content"][0]["text"] == "newer"
        assert (got.vector, got.cost_usd, got.tokens) == (b"\0\0\x80?", "0.01", 7)
        assert await store.get("k2", 102.0) is None
        [candidate] = await store.candidates("p", 102.0)
        assert (candidate.key, candidate.prompt, candidate.tool_use) == ("k1", "q", False)
        await store.record({"k1": 200.0}, {"hits": 2, "saved_usd": 0.5})
        await store.record({}, {"hits": 1})
        stats = await store.stats()
        assert (stats["entries"], stats["bytes"]) == (1, got.size)
        assert (stats["hits"], stats["saved_usd"], stats["misses"]) == (3, 0.5, 0)

    with_store(job)


def test_eviction_by_count_keeps_recently_used(with_store):
    async def job(store: SQLStore) -> list[str]:
        for n in range(3):
            await store.put(entry(f"k{n}", 100.0 + n))
        await store.record({"k0": 500.0}, {})  # k0 was read since: k1 is the oldest
        await store.put(entry("k3", 103.0))
        return [k for k in ("k0", "k1", "k2", "k3") if await store.get(k, 104.0)]

    assert with_store(job, max_entries=3, max_bytes=0) == ["k0", "k2", "k3"]


def test_eviction_by_bytes(with_store):
    async def job(store: SQLStore) -> tuple[int, list[str]]:
        size = entry("k0", 0.0).size
        store.max_bytes = 2 * size
        for n in range(4):
            await store.put(entry(f"k{n}", 100.0 + n))
        stats = await store.stats()
        return stats["bytes"] // size, [k for k in ("k0", "k1", "k2", "k3")
                                          if await store.get(k, 104.0)]

    assert with_store(job, max_entries=0) == (2, ["k2", "k3"])


def test_fill_locks_expire(with_store):
    async def job(store: SQLStore) -> None:
        assert await store.lock("k", 60.0)
        assert not await store.lock("k", 60.0)  # held
        assert await store.locked("k")
        await store.unlock("k")
        assert not await store.locked("k")
        assert await store.lock("k", -1.0)  # expired at once: the next caller takes it
        assert await store.lock("k", 60.0)

    with_store(job)


def test_clear_and_purge_recount(with_store):
    async def job(store: SQLStore) -> None:
        await store.put(entry("a1", 100.0))
        await store.put(entry("a2", 101.0, expires_at=150.0))
        await store.put(entry("b1", 102.0, tenant="principal:b"))
        assert await store.purge(200.0) == 1
        assert await store.clear("principal:a") == 1
        assert (await store.stats())["entries"] == 1
        # the running totals were recounted: one more entry fits under the cap, two do not
        store.max_entries = 2
        await store.put(entry("b2", 103.0, tenant="principal:b"))
        assert await store.get("b1", 200.0) is not None
        await store.put(entry("b3", 104.0, tenant="principal:b"))
        assert await store.get("b1", 200.0) is None
        assert await store.clear() == 2

    with_store(job, max_entries=3)


def test_sqlite_file_of_earlier_versions_is_used_as_is(tmp_path):
    """cache.db files keep their tables (entries, counters): answers and stats survive."""
    old = sqlite3.connect(tmp_path / "cache.db")
    old.executescript("""
        CREATE TABLE entries (key TEXT PRIMARY KEY, tenant TEXT NOT NULL, partition TEXT,
            created_at REAL NOT NULL, expires_at REAL, last_access REAL NOT NULL,
            size INTEGER NOT NULL, body BLOB NOT NULL, prompt TEXT, vector BLOB,
            tool_use INTEGER NOT NULL DEFAULT 0, cost_usd TEXT);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
        INSERT INTO counters VALUES ('hits', 7);
    """)
    e = entry("k", 100.0)
    old.execute("INSERT INTO entries VALUES (?, ?, NULL, 100, NULL, 100, ?, ?, NULL, NULL, 0, "
                "NULL)", (e.key, e.tenant, e.size, e.body))
    old.commit()
    old.close()

    async def job() -> tuple[Entry | None, dict[str, Any]]:
        store = make_store(cache_config(tmp_path))
        await store.open()
        try:
            return await store.get("k", 200.0), await store.stats()
        finally:
            await store.close()

    got, stats = asyncio.run(job())
    assert got is not None and got.message == e.message
    assert (stats["entries"], stats["hits"]) == (1, 7)


def test_store_spellings(tmp_path, monkeypatch):
    def kind_and_where(spec: str) -> tuple[str, str]:
        url = cache_config(tmp_path, store=spec).store
        return url.kind, url.masked

    assert kind_and_where("sqlite") == ("sqlite", str(tmp_path / "cache.db"))
    assert kind_and_where("sub/c.db") == ("sqlite", str(tmp_path / "sub/c.db"))
    assert kind_and_where("/srv/c.sqlite") == ("sqlite", "/srv/c.sqlite")
    assert kind_and_where("rediss://:pw@h:6380/1") == ("redis", "rediss://:***@h:6380/1")
    assert kind_and_where("unix:///tmp/r.sock") == ("redis", "unix:///tmp/r.sock")
    assert kind_and_where("postgresql://u:pw@h/db") == ("postgresql", "postgresql://u:***@h/db")
    monkeypatch.setenv("MIDWAY_TEST_CACHE_STORE", "redis://127.0.0.1:6379/0")
    assert kind_and_where("env:MIDWAY_TEST_CACHE_STORE")[0] == "redis"
    for wrong in ("memcached://x", "postgress"):
        with pytest.raises(ConfigError, match=r"^\[cache\] store"):
            cache_config(tmp_path, store=wrong)


def test_concurrent_puts_keep_the_cap_and_exact_totals(with_store):
    """Puts, touches and purges at once (on PostgreSQL on pooled connections): no deadlock,
    the cap holds, and the running totals match the table."""

    async def job(store: SQLStore) -> tuple[int, list[float]]:
        now = 100.0
        await asyncio.gather(
            *[store.put(entry(f"k{n % 30}", now + n, text=str(n))) for n in range(60)],
            *[store.record({f"k{n}": now + 100 - n for n in range(30)}, {"hits": 1})
              for _ in range(5)],
            *[store.purge(0.0) for _ in range(3)])
        totals = await store.db.fetch(f"SELECT value FROM {store.tc} WHERE name IN "
                                      "('live_entries', 'live_bytes') ORDER BY name")
        stats = await store.stats()
        assert stats["hits"] == 5
        return stats["entries"], [t["value"] for t in totals] + [stats["bytes"]]

    entries, (live_bytes, live_entries, size) = with_store(job, max_entries=10)
    assert entries == 10 and live_entries == 10 and live_bytes == size
