"""``midway config check`` / ``midway db upgrade`` for the cache store, and what the cache
does when its Redis goes away and comes back (a redis-server of this test's own)."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from click.testing import CliRunner
from conftest import body, client, stats

from midway.cli import cli
from midway.testing import wait_for

PG = "postgresql://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A redis-server this test starts, kills and restarts (never the shared one)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for this test"
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL)
        wait_for(self._answers, timeout=10)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis(free_port())
    server.start()
    yield server
    server.stop()


def run(tmp_path: Path, monkeypatch: Any, command: list[str], toml: str) -> tuple[int, str]:
    monkeypatch.setenv("MIDWAY_PLUGINS", "cache")
    config = tmp_path / "midway.toml"
    config.write_text(toml)
    result = CliRunner().invoke(cli, [*command, "--config", str(config),
                                      "--data-dir", str(tmp_path / "data")])
    return result.exit_code, result.output


def problems(output: str) -> list[str]:
    return next(r for r in json.loads(output) if r["subject"] == "cache")["problems"]


def test_redis_reachable_or_not(tmp_path, monkeypatch, own_redis):
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"],
                    f'[cache]\nstore = "{own_redis.url}"\n')
    assert code == 0 and problems(out) == []
    own_redis.stop()
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"],
                    f'[cache]\nstore = "{own_redis.url}"\n')
    assert code == 1 and "unreachable" in problems(out)[0]
    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"],
                    f'[cache]\nstore = "{own_redis.url}"\n')
    assert code == 0 and "cache: up to date" in out  # Redis has no schema


def test_redis_authentication(tmp_path, monkeypatch, own_redis):
    redis.Redis(port=own_redis.port).config_set("requirepass", "s3cret")
    url = f"redis://:wrong@127.0.0.1:{own_redis.port}/0"
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"],
                    f'[cache]\nstore = "{url}"\n')
    assert code == 1
    [problem] = problems(out)
    assert "authentication failed" in problem and "wrong" not in problem


def test_postgres_schema_upgrade(tmp_path, monkeypatch):
    schema = f"t_cache_ops_{secrets.token_hex(4)}"
    toml = f'[cache]\nstore = "{PG}"\nschema = "{schema}"\n'
    try:
        code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
        assert code == 1 and f"schema '{schema}' does not exist" in problems(out)[0]
        code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], toml)
        assert code == 0 and out.count("created table") == 3, out
        code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], toml)
        assert out.strip() == "cache: up to date"
        code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
        assert code == 0 and problems(out) == []
    finally:
        async def drop() -> None:
            db = await asyncpg.connect(PG)
            await db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await db.close()

        asyncio.run(drop())


def test_unknown_store_and_setting(tmp_path, monkeypatch):
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"],
                    '[cache]\nstore = "memcached://x"\n')
    assert code == 1 and "memcached://x" in problems(out)[0]
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], "[cache]\nttll = 3\n")
    assert code == 1 and "ttll" in problems(out)[0]


def test_redis_loss_bypasses_then_recovers(fake_upstream, cached, own_redis):
    running = cached(store=own_redis.url, key_prefix="t:")
    sdk = client(running)

    def ask(prompt: str) -> str:
        raw = sdk.messages.with_raw_response.create(**body(prompt))
        raw.parse()
        return str(raw.headers["x-midway-cache"])

    assert ask("one") == "miss"
    wait_for(lambda: stats(running)["stores"] >= 1)
    assert ask("one") == "hit"
    served = len(fake_upstream.messages_requests)

    own_redis.stop()
    # Requests still succeed, from the upstream, neither read from nor written to the cache.
    assert [ask("one"), ask("two"), ask("two")] == ["bypass"] * 3
    assert len(fake_upstream.messages_requests) == served + 3

    own_redis.start()  # empty: no persistence
    wait_for(lambda: ask("three") == "miss", timeout=15)
    wait_for(lambda: ask("three") == "hit", timeout=15)
