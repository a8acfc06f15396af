"""``midway config check`` for the router: its table, secrets and the shared-state Redis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from midway.cli import cli
from midway.testing import free_port

UPSTREAM = '[[router.upstreams]]\nname = "main"\nurl = "http://127.0.0.1:9"\n'


def check(tmp_path: Path, monkeypatch: Any, toml: str) -> tuple[int, list[str]]:
    monkeypatch.setenv("MIDWAY_PLUGINS", "router")
    config = tmp_path / "midway.toml"
    config.write_text(toml)
    result = CliRunner().invoke(cli, ["config", "check", "--json", "--config", str(config),
                                      "--data-dir", str(tmp_path / "data")])
    report = json.loads(result.output)
    return result.exit_code, next(r for r in report if r["subject"] == "router")["problems"]


def test_shared_state_redis(tmp_path, monkeypatch, redis_url):
    code, found = check(tmp_path, monkeypatch, f'[router]\nstate = "{redis_url}"\n{UPSTREAM}')
    assert (code, found) == (0, [])
    port = free_port()
    code, found = check(tmp_path, monkeypatch,
                        f'[router]\nstate = "redis://:pw@127.0.0.1:{port}/0"\n{UPSTREAM}')
    assert code == 1
    [problem] = found
    assert problem.startswith("[router] state: Redis redis://:***@127.0.0.1:")
    assert "unreachable" in problem


def test_invalid_table_and_missing_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("MIDWAY_TEST_ROUTER_KEY", raising=False)
    code, found = check(tmp_path, monkeypatch, '[router]\nstate = "http://nope"\n' + UPSTREAM)
    assert code == 1 and "midway.toml: [router] state: expected a redis:// URL" in found[0]
    code, found = check(tmp_path, monkeypatch,
                        UPSTREAM + 'keys = ["env:MIDWAY_TEST_ROUTER_KEY"]\n')
    assert code == 1 and "MIDWAY_TEST_ROUTER_KEY" in found[0]
    code, found = check(tmp_path, monkeypatch, UPSTREAM)
    assert (code, found) == (0, [])
