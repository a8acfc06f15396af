"""The PostgreSQL and Redis fixtures of ``midway.testing``: what they hand out, what they
clean up, and that a missing shared server fails a test instead of skipping it."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis

from midway.testing import PrivatePostgres, PrivateRedis, pg_query

pytest_plugins = ["pytester"]


def test_pg_schema_factory_creates_names_and_drops_all(pg_schema_factory, postgres_dsn):
    created, missing = pg_schema_factory(), pg_schema_factory(create=False)
    assert created != missing
    present = {r[0] for r in pg_query(postgres_dsn, "SELECT nspname FROM pg_namespace "
                                      "WHERE nspname = ANY($1)", [created, missing])}
    assert present == {created}
    pg_query(postgres_dsn, f'CREATE TABLE "{created}".t (x int)')
    pg_query(postgres_dsn, "INSERT INTO t VALUES (1)", schema=created)
    assert pg_query(postgres_dsn, "SELECT x FROM t", schema=created)[0]["x"] == 1


def test_shared_fixtures_fail_when_the_server_is_unreachable(pytester, monkeypatch):
    from midway.testing import free_port

    port = free_port()
    monkeypatch.setenv("MIDWAY_TEST_POSTGRES", f"postgresql://postgres@127.0.0.1:{port}/x")
    monkeypatch.setenv("MIDWAY_TEST_REDIS", f"redis://127.0.0.1:{port}/0")
    pytester.makepyfile("""
        def test_pg(pg_schema):
            pass

        def test_redis(redis_prefix):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*PostgreSQL for tests is unreachable at postgresql://*",
                                 "*Redis for tests is unreachable at redis://*"])


def test_teardown_drops_schemas_and_prefixed_keys(pytester, postgres_dsn, redis_url):
    pytester.makepyfile("""
        import redis
        from midway.testing import pg_query

        def test_leave_things(pg_schema_factory, postgres_dsn, redis_prefix, redis_url):
            names = [pg_schema_factory(), pg_schema_factory(create=False)]
            pg_query(postgres_dsn, f'CREATE SCHEMA "{names[1]}"')  # as `db upgrade` would
            client = redis.Redis.from_url(redis_url)
            client.set(redis_prefix + ":a", 1)
            client.set(redis_prefix + "b", 2)
            client.close()
            print("LEFT", " ".join(names), redis_prefix)
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1)
    [line] = [line for line in result.outlines if "LEFT " in line]
    *schemas, prefix = line.partition("LEFT ")[2].split()
    assert pg_query(postgres_dsn, "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1)",
                    schemas) == []
    client = redis.Redis.from_url(redis_url)
    assert list(client.scan_iter(match=prefix + "*")) == []
    client.close()


def test_redis_prefix_is_unique(redis_prefix, redis_url):
    client = redis.Redis.from_url(redis_url)
    assert list(client.scan_iter(match=redis_prefix + "*")) == []
    client.close()


def test_private_postgres_stops_crashes_and_restarts(private_postgres: PrivatePostgres):
    dsn = private_postgres.dsn
    pg_query(dsn, "CREATE TABLE kept (x int)")
    pg_query(dsn, "INSERT INTO kept VALUES (1)")

    async def connection_sees_stop() -> None:
        conn = await asyncpg.connect(dsn)
        private_postgres.stop("fast")
        with pytest.raises((asyncpg.PostgresError, OSError, asyncpg.InterfaceError)):
            await conn.fetchval("SELECT 1")
        with pytest.raises(OSError):
            await asyncpg.connect(dsn)

    asyncio.run(connection_sees_stop())
    private_postgres.start()
    assert pg_query(dsn, "SELECT x FROM kept")[0]["x"] == 1
    private_postgres.stop("immediate")  # a crash: recovery replays the log on start
    private_postgres.start()
    pg_query(dsn, "INSERT INTO kept VALUES (2)")
    private_postgres.restart()
    assert [r["x"] for r in pg_query(dsn, "SELECT x FROM kept ORDER BY x")] == [1, 2]
    with pytest.raises(ValueError):
        private_postgres.stop("smart")


def test_private_postgres_is_removed_after_use():
    cluster = PrivatePostgres()
    cluster.start()
    assert pg_query(cluster.dsn, "SELECT current_user")[0][0] == "postgres"
    cluster.remove()
    assert not cluster.root.exists()
    with pytest.raises(OSError):
        pg_query(cluster.dsn, "SELECT 1")


def test_private_redis_loses_its_data_on_stop(private_redis: PrivateRedis):
    client = redis.Redis.from_url(private_redis.url)
    client.set("k", "v")
    private_redis.stop()
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    private_redis.start()
    assert client.get("k") is None
    client.close()
