"""``midway config check`` and ``midway db upgrade`` on the billing store."""

from __future__ import annotations

from yarl import URL

from midway.testing import check_problems, free_port, pg_query, run_cli


def test_schema_missing_tables_missing_upgrade(tmp_path, postgres_dsn, pg_schema):
    toml = f'[billing]\nstore = "{postgres_dsn}"\nschema = "{pg_schema}"\n'
    code, out = run_cli(tmp_path, "billing", ["config", "check", "--json"], toml)
    assert code == 1
    [problem] = check_problems(out, "billing")  # the schema exists, empty
    assert "billing_batches, billing_counters, billing_ledger, billing_principals, " \
        "billing_reservations, billing_spend_audit, billing_spend_limits missing" in problem
    assert "midway db upgrade" in problem

    pg_query(postgres_dsn, f'DROP SCHEMA "{pg_schema}"')
    code, out = run_cli(tmp_path, "billing", ["config", "check", "--json"], toml)
    assert f"schema '{pg_schema}' does not exist" in check_problems(out, "billing")[0]

    code, out = run_cli(tmp_path, "billing", ["db", "upgrade"], toml)
    assert code == 0, out
    assert out.count("created table") == 7
    code, out = run_cli(tmp_path, "billing", ["db", "upgrade"], toml)
    assert out.strip() == "billing: up to date"
    code, out = run_cli(tmp_path, "billing", ["config", "check", "--json"], toml)
    assert code == 0 and check_problems(out, "billing") == []

    pg_query(postgres_dsn, "ALTER TABLE billing_ledger DROP COLUMN saved_pusd", schema=pg_schema)
    code, out = run_cli(tmp_path, "billing", ["config", "check", "--json"], toml)
    assert "billing_ledger is older" in check_problems(out, "billing")[0]
    code, out = run_cli(tmp_path, "billing", ["db", "upgrade"], toml)
    assert code == 0 and "added column(s) saved_pusd to billing_ledger" in out
    code, out = run_cli(tmp_path, "billing", ["config", "check", "--json"], toml)
    assert code == 0 and check_problems(out, "billing") == []


def test_unreachable_wrong_database_and_invalid_budgets(tmp_path, postgres_dsn):
    port = free_port()
    code, out = run_cli(tmp_path, "billing", ["config", "check", "--json"],
                        f'[billing]\nstore = "postgresql://postgres@127.0.0.1:{port}/test"\n')
    assert code == 1 and "unreachable" in check_problems(out, "billing")[0]
    code, out = run_cli(tmp_path, "billing", ["config", "check", "--json"],
                        f'[billing]\nstore = "{URL(postgres_dsn).with_path("/no_such_db_x")}"\n')
    assert "database does not exist" in check_problems(out, "billing")[0]
    code, out = run_cli(tmp_path, "billing", ["config", "check", "--json"],
                        '[[billing.budgets]]\nscope = "galaxy"\nlimit_usd = "1"\n')
    assert code == 1 and "scope must be one of" in check_problems(out, "billing")[0]
    code, out = run_cli(tmp_path, "billing", ["db", "upgrade"],
                        f'[billing]\nstore = "postgresql://postgres@127.0.0.1:{port}/test"\n')
    assert code == 1 and "billing" in out


def test_sqlite_default_is_created(tmp_path):
    code, out = run_cli(tmp_path, "billing", ["config", "check"], "")
    assert code == 0 and "billing: ok" in out
    code, out = run_cli(tmp_path, "billing", ["db", "upgrade"], "")
    assert code == 0 and (tmp_path / "data" / "billing.db").exists()


def test_config_check_judges_the_installed_catalogue(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "billing-prices.toml").write_text('version = "x"\n[families]\n')
    code, out = run_cli(tmp_path, "billing", ["config", "check"], "")
    assert code != 0 and "billing: PROBLEMS" in out
    assert "prices_file" in out and "billing prices update" in out
