"""``midway config check`` for the router: its table, secrets and the shared-state Redis."""

from __future__ import annotations

from pathlib import Path

from midway.testing import check_problems, free_port, run_cli

UPSTREAM = '[[router.upstreams]]\nname = "main"\nurl = "http://127.0.0.1:9"\n'


def check(tmp_path: Path, toml: str) -> tuple[int, list[str]]:
    code, out = run_cli(tmp_path, "router", ["config", "check", "--json"], toml)
    return code, check_problems(out, "router")


def test_shared_state_redis(tmp_path, redis_url):
    code, found = check(tmp_path, f'[router]\nstate = "{redis_url}"\n{UPSTREAM}')
    assert (code, found) == (0, [])
    port = free_port()
    code, found = check(tmp_path, f'[router]\nstate = "redis://:pw@127.0.0.1:{port}/0"\n{UPSTREAM}')
    assert code == 1
    [problem] = found
    assert problem.startswith("[router] state: Redis redis://:***@127.0.0.1:")
    assert "unreachable" in problem


def test_invalid_table_and_missing_secret(tmp_path, monkeypatch):
    monkeypatch.delenv("MIDWAY_TEST_ROUTER_KEY", raising=False)
    code, found = check(tmp_path, '[router]\nstate = "http://nope"\n' + UPSTREAM)
    assert code == 1 and "midway.toml: [router] state: expected a redis:// URL" in found[0]
    code, found = check(tmp_path, UPSTREAM + 'keys = ["env:MIDWAY_TEST_ROUTER_KEY"]\n')
    assert code == 1 and "MIDWAY_TEST_ROUTER_KEY" in found[0]
    code, found = check(tmp_path, UPSTREAM)
    assert (code, found) == (0, [])
