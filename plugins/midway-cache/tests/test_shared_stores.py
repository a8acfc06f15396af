"""Redis and PostgreSQL stores against the real servers on 127.0.0.1, shared by two instances.

Each test gets its own Redis key prefix / PostgreSQL schema and removes it afterwards.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from click.testing import CliRunner
from conftest import USE_CACHE, body, client, stats, stored

import midway_cache
from midway.cli import cli
from midway.identity import passthrough_principal
from midway.testing import Reply


@pytest.fixture(params=["redis", "postgres"])
def shared(request):
    """Cache settings for a fresh namespace on a real server (removed after the test)."""
    if request.param == "redis":
        return {"store": request.getfixturevalue("redis_url"),
                "key_prefix": request.getfixturevalue("redis_prefix") + ":"}
    return {"store": request.getfixturevalue("postgres_dsn"),
            "schema": request.getfixturevalue("pg_schema_factory")(create=False)}


@pytest.fixture
def pair(shared, midway_factory):
    """Two midway instances sharing one store."""
    return [midway_factory(plugins=[("cache", midway_cache)], config={"cache": shared})
            for _ in range(2)]


def test_instances_share_entries_not_tenants(pair, fake_upstream):
    a, b = pair
    first = client(a).messages.create(**body())
    stored(a)
    hit = client(b).messages.with_raw_response.create(**body())
    assert hit.headers["x-midway-cache"] == "hit"
    assert hit.parse().content[0].text == first.content[0].text
    other = client(b, "sk-ant-test-bob").messages.with_raw_response.create(**body())
    assert other.headers["x-midway-cache"] == "miss"
    assert len(fake_upstream.messages_requests) == 2
    stored(b, 2)
    s = stats(b)
    assert (s["entries"], s["hits"], s["misses"]) == (2, 1, 2)


def test_stampede_across_instances_sends_one_request(pair, fake_upstream):
    fake_upstream.reply(Reply(delay=0.05))

    async def burst() -> list[str]:
        async with aiohttp.ClientSession() as session:
            async def one(url: str) -> str:
                async with session.post(f"{url}/v1/messages", json=body(),
                                        headers={**USE_CACHE, "x-api-key": "sk-ant-test-alice",
                                                 "anthropic-version": "2023-06-01"}) as resp:
                    assert resp.status == 200
                    await resp.read()
                    return resp.headers["x-midway-cache"]
            return await asyncio.gather(*[one(pair[i % 2].url) for i in range(20)])

    results = asyncio.run(burst())
    assert len(fake_upstream.messages_requests) == 1
    assert results.count("hit") == 19


def test_semantic_hit_across_instances(shared, midway_factory, fake_upstream):
    a, b = [midway_factory(plugins=[("cache", midway_cache)],
                           config={"cache": {**shared, "semantic": True}}) for _ in range(2)]
    client(a).messages.create(**body("How do I install numpy with pip?"))
    stored(a)
    answer = client(b).messages.with_raw_response.create(
        **body("How can I install numpy using pip?"))
    assert answer.headers["x-midway-cache"] == "semantic-hit"
    trap = client(b).messages.with_raw_response.create(**body("How do I uninstall numpy with pip?"))
    assert trap.headers["x-midway-cache"] == "miss"


def test_lru_cap_and_clear_by_principal(shared, midway_factory, fake_upstream):
    running = midway_factory(plugins=[("cache", midway_cache)],
                             config={"cache": {**shared, "max_entries": 2}})
    c = client(running)
    for n, prompt in enumerate(("one", "two", "three"), start=1):
        c.messages.create(**body(prompt))
        stored(running, n)
    assert stats(running)["entries"] == 2
    assert c.messages.with_raw_response.create(**body("three")).headers["x-midway-cache"] == "hit"
    assert c.messages.with_raw_response.create(**body("one")).headers["x-midway-cache"] == "miss"
    stored(running, 4)
    client(running, "sk-ant-test-bob").messages.create(**body("bob"))
    stored(running, 5)

    alice = passthrough_principal("sk-ant-test-alice").id
    env = {f"MIDWAY_CACHE__{k.upper()}": v for k, v in shared.items()}
    runner = CliRunner(env=env)
    before = orjson.loads(runner.invoke(cli, ["cache", "stats", "--json"],
                                        catch_exceptions=False).output)
    assert before["entries"] == 2  # alice's "one" and bob's: the cap held
    assert before["stores"] == 5
    result = runner.invoke(cli, ["cache", "clear", "--principal", alice], catch_exceptions=False)
    assert result.exit_code == 0
    after = orjson.loads(runner.invoke(cli, ["cache", "stats", "--json"],
                                       catch_exceptions=False).output)
    assert after["entries"] == 1  # bob's entry is left


def test_a_redis_store_that_stays_away_stops_start_up_in_one_line():
    from midway.storage import StoreUnavailable
    from midway.storage.retry import STORE_WAIT
    from midway.testing_services import free_port
    from midway_cache.stores.redis import RedisStore

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"

    async def main():
        STORE_WAIT.set(0.2)
        store = RedisStore(url, "midway:test:", max_bytes=1 << 20, max_entries=10)
        try:
            await store.open()
        finally:
            await store.close()

    with pytest.raises(StoreUnavailable) as raised:
        asyncio.run(main())
    message = str(raised.value)
    assert message.startswith("[cache] store: Redis redis://:***@127.0.0.1:")
    assert ": unreachable for 0.2 s (" in message and "hunter2" not in message
