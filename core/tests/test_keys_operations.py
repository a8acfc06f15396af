"""``midway config check`` and ``midway db upgrade`` for the key store."""

from __future__ import annotations

import json

from midway.testing import check_problems, free_port, run_cli


def test_postgres_key_store_check_and_upgrade(tmp_path, postgres_dsn,
                                              pg_schema_factory):
    schema = pg_schema_factory(create=False)
    toml = f'[keys]\nenabled = true\nstore = "{postgres_dsn}"\nschema = "{schema}"\n'
    code, out = run_cli(tmp_path, "", ["config", "check", "--json"], toml)
    assert code == 1
    assert f"schema '{schema}' does not exist" in check_problems(out, "keys")[0]
    code, out = run_cli(tmp_path, "", ["db", "upgrade"], toml)
    assert code == 0 and out.count("created table") == 3, out
    code, out = run_cli(tmp_path, "", ["db", "upgrade"], toml)
    assert out.strip() == "keys: up to date"
    code, out = run_cli(tmp_path, "", ["config", "check", "--json"], toml)
    assert code == 0 and check_problems(out, "keys") == []


def test_unreachable_and_sqlite(tmp_path):
    port = free_port()
    code, out = run_cli(tmp_path, "", ["config", "check", "--json"],
                        f'[keys]\nenabled = true\nstore = "postgresql://u:pw@127.0.0.1:{port}/x"\n')
    assert code == 1
    [problem] = check_problems(out, "keys")
    assert "unreachable" in problem and ":pw@" not in problem
    code, out = run_cli(tmp_path, "", ["db", "upgrade"], "[keys]\nenabled = true\n")
    assert code == 0 and out.count("created table") == 3 and "keys: SQLite " in out, out
    assert (tmp_path / "data" / "keys.db").exists()
    code, out = run_cli(tmp_path, "", ["config", "check"], "[keys]\nenabled = true\n")
    assert code == 0 and "keys: ok" in out
    code, out = run_cli(tmp_path, "", ["config", "check", "--json"], "")
    assert not any(r["subject"] == "keys" for r in json.loads(out))  # not enabled
