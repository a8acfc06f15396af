"""``midway config check`` / ``midway db upgrade`` for the cache store, and what the cache
does when its Redis goes away and comes back (a redis-server of this test's own)."""

from __future__ import annotations

import json
import os

import pytest
import redis
from conftest import body, client, stats

from midway.config import ConfigError
from midway.options import load_table
from midway.storage import StoreURL
from midway.testing import check_problems, run_cli, wait_for
from midway_cache.config import CacheConfig


def test_redis_reachable_or_not(tmp_path, private_redis):
    code, out = run_cli(tmp_path, "cache", ["config", "check", "--json"],
                        f'[cache]\nstore = "{private_redis.url}"\n')
    assert code == 0 and check_problems(out, "cache") == []
    private_redis.stop()
    code, out = run_cli(tmp_path, "cache", ["config", "check", "--json"],
                        f'[cache]\nstore = "{private_redis.url}"\n')
    assert code == 1 and "unreachable" in check_problems(out, "cache")[0]
    code, out = run_cli(tmp_path, "cache", ["db", "upgrade"],
                        f'[cache]\nstore = "{private_redis.url}"\n')
    assert code == 0 and "cache: up to date" in out  # Redis has no schema


def test_redis_authentication(tmp_path, private_redis):
    redis.Redis(port=private_redis.port).config_set("requirepass", "s3cret")
    url = f"redis://:wrong@127.0.0.1:{private_redis.port}/0"
    code, out = run_cli(tmp_path, "cache", ["config", "check", "--json"],
                        f'[cache]\nstore = "{url}"\n')
    assert code == 1
    [problem] = check_problems(out, "cache")
    assert "authentication failed" in problem and "wrong" not in problem


def test_postgres_schema_upgrade(tmp_path, postgres_dsn, pg_schema_factory):
    schema = pg_schema_factory(create=False)
    toml = f'[cache]\nstore = "{postgres_dsn}"\nschema = "{schema}"\n'
    code, out = run_cli(tmp_path, "cache", ["config", "check", "--json"], toml)
    assert code == 1 and f"schema '{schema}' does not exist" in check_problems(out, "cache")[0]
    code, out = run_cli(tmp_path, "cache", ["db", "upgrade"], toml)
    assert code == 0 and out.count("created table") == 3, out
    code, out = run_cli(tmp_path, "cache", ["db", "upgrade"], toml)
    assert out.strip() == "cache: up to date"
    code, out = run_cli(tmp_path, "cache", ["config", "check", "--json"], toml)
    assert code == 0 and check_problems(out, "cache") == []


def test_unknown_store_and_setting(tmp_path):
    code, out = run_cli(tmp_path, "cache", ["config", "check", "--json"],
                        '[cache]\nstore = "memcached://x"\n')
    assert code == 1 and "memcached://x" in check_problems(out, "cache")[0]
    code, out = run_cli(tmp_path, "cache", ["config", "check", "--json"], "[cache]\nttll = 3\n")
    assert code == 1 and len(check_problems(out, "cache")) == 1
    assert "[cache] ttll: unknown setting; did you mean `ttl`?" in check_problems(out, "cache")[0]
    code, out = run_cli(tmp_path, "cache", ["cache", "stats"], "[cache]\nsemantic_treshold = 1\n")
    assert code == 1
    assert "[cache] semantic_treshold: unknown setting; did you mean `semantic_threshold`?" in out


def test_the_table_keeps_its_keys_defaults_and_meanings(tmp_path, monkeypatch):
    config = load_table(CacheConfig, "cache", {}, data_dir=tmp_path)
    assert config.store == StoreURL("sqlite", path=tmp_path / "cache.db")
    assert (config.ttl, config.max_bytes, config.share) == (7 * 86400, 1024 ** 3, "principal")
    assert config.threshold_for("claude-haiku-4-5") == 0.70  # the verifier is on
    assert config.embedder_window == 64
    without = load_table(CacheConfig, "cache", {"semantic_verifier": False}, data_dir=tmp_path)
    assert without.threshold_for("claude-haiku-4-5") == 0.95  # the threshold alone: strict
    monkeypatch.setenv("MIDWAY_CACHE__SEMANTIC_THRESHOLDS", '{ "claude-haiku-*" = 0.97 }')
    monkeypatch.setenv("MIDWAY_CACHE__TTL", "1h")
    config = load_table(CacheConfig, "cache", {"max_bytes": "64MiB", "store": "redis://h:6379"},
                        env=os.environ, data_dir=tmp_path)
    assert config.threshold_for("claude-haiku-4-5") == 0.97 and config.ttl == 3600.0
    assert config.max_bytes == 64 * 1024 ** 2 and config.store.kind == "redis"


@pytest.mark.parametrize(("table", "message"), [
    ({"share": "everyone"}, "[cache] share: expected one of 'principal', 'team', 'global'"),
    ({"semantic_mode": "on"}, "[cache] semantic_mode: expected one of 'serve', 'shadow'"),
    ({"semantic_threshold": 1.5}, "[cache] semantic_threshold: expected a number in (0, 1]"),
    ({"semantic_threshold": 0}, "[cache] semantic_threshold: expected a number in (0, 1]"),
    ({"semantic_thresholds": {"claude-*": 2}},
     "[cache] semantic_thresholds.claude-*: expected a number in (0, 1]"),
    ({"embedder_window": 512}, "[cache] embedder_window: expected at most 256"),
    ({"embedder_window": 4}, "[cache] embedder_window: expected a number >= 8"),
    ({"ttl": "a week"}, "[cache] ttl: expected a duration"),
    ({"embedder_api_key": 12345}, "[cache] embedder_api_key: expected a string (or unset)"),
])
def test_a_bad_value_is_one_line_naming_the_key(tmp_path, table, message):
    with pytest.raises(ConfigError) as info:
        load_table(CacheConfig, "cache", table, data_dir=tmp_path)
    assert str(info.value).startswith(message)
    assert "12345" not in str(info.value)  # a secret is never echoed


def test_redis_loss_bypasses_then_recovers(fake_upstream, cached, private_redis):
    running = cached(store=private_redis.url, key_prefix="t:")
    sdk = client(running)

    def ask(prompt: str) -> str:
        raw = sdk.messages.with_raw_response.create(**body(prompt))
        raw.parse()
        return str(raw.headers["x-midway-cache"])

    assert ask("one") == "miss"
    wait_for(lambda: stats(running)["stores"] >= 1)
    assert ask("one") == "hit"
    served = len(fake_upstream.messages_requests)

    private_redis.stop()
    # Requests still succeed, from the upstream, neither read from nor written to the cache.
    assert [ask("one"), ask("two"), ask("two")] == ["bypass"] * 3
    assert len(fake_upstream.messages_requests) == served + 3

    private_redis.start()  # empty: no persistence
    wait_for(lambda: ask("three") == "miss", timeout=15)
    wait_for(lambda: ask("three") == "hit", timeout=15)


def test_stats_print_money_as_exact_decimals(tmp_path):
    """Three hits that saved $0.00037 each sum to a float with noise (0.0011099999999999999):
    the command prints the decimal."""
    import asyncio

    from midway_cache.stores import make_store

    config = load_table(CacheConfig, "cache", {}, data_dir=tmp_path / "data")

    async def saved() -> None:
        store = make_store(config)
        await store.open()
        try:
            for _ in range(3):
                await store.record({}, {"hits": 1, "saved_usd": 0.00037})
        finally:
            await store.close()

    asyncio.run(saved())
    code, out = run_cli(tmp_path, "cache", ["cache", "stats", "--json"], "")
    assert code == 0, out
    shown = json.loads(out)
    assert shown["saved_usd"] == "0.00111" and shown["hits"] == 3
    code, out = run_cli(tmp_path, "cache", ["cache", "stats"], "")
    assert "saved usd     0.00111\n" in out


def test_startup_line_names_the_semantic_settings_in_force(tmp_path):
    from midway_cache import describe

    class Idle:  # not started: describe reads the table
        def __init__(self, table: dict[str, object]) -> None:
            self.table = table
            self.services: dict[str, object] = {}

        def options(self, name: str, cls: type) -> CacheConfig:
            return load_table(CacheConfig, name, self.table, data_dir=tmp_path)

    line = describe(Idle({"semantic": True}))
    assert "similar prompts too (serve, minilm similarity >= 0.70, guard on, verifier on, " \
        "64-token window)" in line
    assert "similarity >= 0.95" in describe(Idle({"semantic": True,
                                                  "semantic_verifier": False}))
    assert "similar" not in describe(Idle({}))
