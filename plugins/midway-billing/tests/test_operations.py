"""``midway config check`` and ``midway db upgrade`` on the billing store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from yarl import URL

from midway.cli import cli
from midway.testing import free_port, pg_query


def run(tmp_path: Path, monkeypatch: Any, command: list[str], toml: str) -> tuple[int, str]:
    monkeypatch.setenv("MIDWAY_PLUGINS", "billing")
    config = tmp_path / "midway.toml"
    config.write_text(toml)
    result = CliRunner().invoke(cli, [*command, "--config", str(config),
                                      "--data-dir", str(tmp_path / "data")])
    return result.exit_code, result.output


def problems(output: str) -> list[str]:
    return next(r for r in json.loads(output) if r["subject"] == "billing")["problems"]


def test_schema_missing_tables_missing_upgrade(tmp_path, monkeypatch, postgres_dsn, pg_schema):
    toml = f'[billing]\nstore = "{postgres_dsn}"\nschema = "{pg_schema}"\n'
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
    assert code == 1
    [problem] = problems(out)  # the schema exists, empty
    assert "billing_batches, billing_counters, billing_ledger, billing_principals, " \
        "billing_reservations, billing_spend_audit, billing_spend_limits missing" in problem
    assert "midway db upgrade" in problem

    pg_query(postgres_dsn, f'DROP SCHEMA "{pg_schema}"')
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
    assert f"schema '{pg_schema}' does not exist" in problems(out)[0]

    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], toml)
    assert code == 0, out
    assert out.count("created table") == 7
    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], toml)
    assert out.strip() == "billing: up to date"
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
    assert code == 0 and problems(out) == []

    pg_query(postgres_dsn, "ALTER TABLE billing_ledger DROP COLUMN saved_pusd", schema=pg_schema)
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
    assert "billing_ledger is older" in problems(out)[0]
    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], toml)
    assert code == 0 and "added column(s) saved_pusd to billing_ledger" in out
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
    assert code == 0 and problems(out) == []


def test_unreachable_wrong_database_and_invalid_budgets(tmp_path, monkeypatch, postgres_dsn):
    port = free_port()
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"],
                    f'[billing]\nstore = "postgresql://postgres@127.0.0.1:{port}/test"\n')
    assert code == 1 and "unreachable" in problems(out)[0]
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"],
                    f'[billing]\nstore = "{URL(postgres_dsn).with_path("/no_such_db_x")}"\n')
    assert "database does not exist" in problems(out)[0]
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"],
                    '[[billing.budgets]]\nscope = "galaxy"\nlimit_usd = "1"\n')
    assert code == 1 and "scope must be one of" in problems(out)[0]
    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"],
                    f'[billing]\nstore = "postgresql://postgres@127.0.0.1:{port}/test"\n')
    assert code == 1 and "billing" in out


def test_sqlite_default_is_created(tmp_path, monkeypatch):
    code, out = run(tmp_path, monkeypatch, ["config", "check"], "")
    assert code == 0 and "billing: ok" in out
    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], "")
    assert code == 0 and (tmp_path / "data" / "billing.db").exists()


def test_config_check_judges_the_installed_catalogue(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "billing-prices.toml").write_text('version = "x"\n[families]\n')
    code, out = run(tmp_path, monkeypatch, ["config", "check"], "")
    assert code != 0 and "billing: PROBLEMS" in out
    assert "prices_file" in out and "billing prices update" in out
