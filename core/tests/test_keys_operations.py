"""``midway config check`` and ``midway db upgrade`` for the key store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from midway.cli import cli
from midway.testing import free_port


def run(tmp_path: Path, monkeypatch: Any, command: list[str], toml: str) -> tuple[int, str]:
    monkeypatch.setenv("MIDWAY_PLUGINS", "")
    config = tmp_path / "midway.toml"
    config.write_text(toml)
    result = CliRunner().invoke(cli, [*command, "--config", str(config),
                                      "--data-dir", str(tmp_path / "data")])
    return result.exit_code, result.output


def keys_problems(output: str) -> list[str]:
    return next(r for r in json.loads(output) if r["subject"] == "keys")["problems"]


def test_postgres_key_store_check_and_upgrade(tmp_path, monkeypatch, postgres_dsn,
                                              pg_schema_factory):
    schema = pg_schema_factory(create=False)
    toml = f'[keys]\nenabled = true\nstore = "{postgres_dsn}"\nschema = "{schema}"\n'
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
    assert code == 1
    assert f"schema '{schema}' does not exist" in keys_problems(out)[0]
    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], toml)
    assert code == 0 and out.count("created table") == 3, out
    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], toml)
    assert out.strip() == "keys: up to date"
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
    assert code == 0 and keys_problems(out) == []


def test_unreachable_and_sqlite(tmp_path, monkeypatch):
    port = free_port()
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"],
                    f'[keys]\nenabled = true\nstore = "postgresql://u:pw@127.0.0.1:{port}/x"\n')
    assert code == 1
    [problem] = keys_problems(out)
    assert "unreachable" in problem and ":pw@" not in problem
    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], "[keys]\nenabled = true\n")
    assert code == 0 and out.count("created table") == 3 and "keys: SQLite " in out, out
    assert (tmp_path / "data" / "keys.db").exists()
    code, out = run(tmp_path, monkeypatch, ["config", "check"], "[keys]\nenabled = true\n")
    assert code == 0 and "keys: ok" in out
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], "")
    assert not any(r["subject"] == "keys" for r in json.loads(out))  # not enabled
