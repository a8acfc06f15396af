"""``midway config check`` and ``midway db upgrade`` on the audit store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from midway.config import ConfigError
from midway.options import load_table
from midway.testing import check_problems, free_port, pg_query, run_cli
from midway_audit.config import AuditConfig


def test_missing_schema_then_upgrade_then_old_schema(tmp_path, postgres_dsn,
                                                     pg_schema_factory):
    schema = pg_schema_factory(create=False)
    toml = f'[audit]\nstore = "{postgres_dsn}"\nschema = "{schema}"\n'
    code, out = run_cli(tmp_path, "audit", ["config", "check", "--json"], toml)
    assert code == 1
    [problem] = check_problems(out, "audit")
    assert f"schema '{schema}' does not exist" in problem and "midway db upgrade" in problem

    code, out = run_cli(tmp_path, "audit", ["db", "upgrade"], toml)
    assert code == 0, out
    assert "created table audit_records" in out and "created table audit_chain" in out
    code, out = run_cli(tmp_path, "audit", ["db", "upgrade"], toml)
    assert (code, out.strip()) == (0, "audit: up to date")  # idempotent
    code, out = run_cli(tmp_path, "audit", ["config", "check", "--json"], toml)
    assert code == 0 and check_problems(out, "audit") == []

    # A schema from before a column existed.
    pg_query(postgres_dsn, "ALTER TABLE audit_records DROP COLUMN upstream_request_id",
             schema=schema)
    code, out = run_cli(tmp_path, "audit", ["config", "check", "--json"], toml)
    [problem] = check_problems(out, "audit")
    assert "audit_records is older" in problem and "upstream_request_id" in problem
    code, out = run_cli(tmp_path, "audit", ["db", "upgrade"], toml)
    assert code == 0 and "added column(s) upstream_request_id to audit_records" in out
    code, out = run_cli(tmp_path, "audit", ["config", "check", "--json"], toml)
    assert code == 0 and check_problems(out, "audit") == []


def test_unreachable_postgres_and_bad_config(tmp_path):
    dsn = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/test"
    code, out = run_cli(tmp_path, "audit", ["config", "check", "--json"],
                        f'[audit]\nstore = "{dsn}"\n')
    assert code == 1
    [problem] = check_problems(out, "audit")
    assert "unreachable" in problem and "hunter2" not in problem  # the password is masked
    code, out = run_cli(tmp_path, "audit", ["config", "check", "--json"],
                        '[audit]\nstore = "mysql://x"\n')
    assert code == 1 and "unknown scheme" in check_problems(out, "audit")[0]


def test_sqlite_store_checked_and_created(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"not a database, not at all" * 100)
    code, out = run_cli(tmp_path, "audit", ["config", "check", "--json"],
                        f'[audit]\nstore = "sqlite://{tmp_path}/junk.db"\n')
    assert code == 1 and "not a usable SQLite database" in check_problems(out, "audit")[0]
    code, out = run_cli(tmp_path, "audit", ["db", "upgrade"], '[audit]\nstore = "sqlite"\n')
    assert code == 0 and "created" in out and (tmp_path / "data" / "audit.db").exists()
    code, out = run_cli(tmp_path, "audit", ["config", "check"], '[audit]\nstore = "sqlite"\n')
    assert code == 0 and "audit: ok" in out


def test_store_setting_follows_the_one_grammar(tmp_path, monkeypatch):
    """``store`` is read by midway.storage.parse_store: the default file, paths (relative ones
    under the data dir), sqlite:/// URLs and env: references land where every plugin's do."""
    monkeypatch.setenv("AUDIT_STORE_TEST", f"sqlite://{tmp_path}/from-env.db")
    for value, path in [("sqlite", tmp_path / "audit.db"),
                        ("trail/audit.db", tmp_path / "trail" / "audit.db"),
                        (f"sqlite://{tmp_path}/abs.db", tmp_path / "abs.db"),  # sqlite:///tmp/…
                        ("env:AUDIT_STORE_TEST", tmp_path / "from-env.db")]:
        assert audit_config({"store": value}, tmp_path).store.path == path
    assert audit_config({}, tmp_path).store.path == tmp_path / "audit.db"
    pg = audit_config({"store": "postgresql://u:secret@h/db"}, tmp_path)
    assert pg.is_postgres and "secret" not in pg.describe_store()
    with pytest.raises(ConfigError) as info:
        audit_config({"store": "sqlite3"}, tmp_path)  # a typo is not a new file
    assert str(info.value).startswith("[audit] store:")


def audit_config(table: dict[str, Any], data_dir: Path) -> AuditConfig:
    return load_table(AuditConfig, "audit", table, data_dir=data_dir)


def test_the_table_keeps_its_keys_defaults_and_meanings(tmp_path, monkeypatch):
    """Every key as docs/audit.md describes it, from the file and from the environment."""
    config = audit_config({}, tmp_path)
    assert (config.bodies, config.write_ahead, config.write_ahead_durable) == (True, True, False)
    # retention by default: bodies 30 days, records a year
    assert (config.body_max_age, config.max_age, config.max_rows, config.prune_interval) == \
        (30 * 86400, 365 * 86400, None, 300.0)
    assert config.jsonl_path(tmp_path) is None and config.schema is None
    config = audit_config({"write_ahead": "durable", "max_age": "90d", "max_rows": 0,
                           "body_max_age": 0,
                           "prune_interval": 0, "jsonl": "audit.jsonl",
                           "redact_headers": ["X-Internal-User"], "schema": "",
                           "sqlite_synchronous": "NORMAL", "handoff_bytes": "2MiB"}, tmp_path)
    assert config.write_ahead and config.write_ahead_durable
    assert (config.max_age, config.max_rows, config.prune_interval) == (90 * 86400, None, 300.0)
    assert config.body_max_age is None  # 0: bodies kept as long as records
    assert config.jsonl_path(tmp_path) == tmp_path / "audit.jsonl"
    assert config.jsonl_path(tmp_path / "other") == tmp_path / "other" / "audit.jsonl"
    assert config.redact_headers == ("x-internal-user",) and config.schema is None
    assert config.sqlite_synchronous == "normal" and config.handoff_bytes == 2 * 1024 * 1024
    monkeypatch.setenv("MIDWAY_AUDIT__WRITE_AHEAD", "false")
    monkeypatch.setenv("MIDWAY_AUDIT__BODIES", "off")
    from_env = load_table(AuditConfig, "audit", {}, env=os.environ, data_dir=tmp_path)
    assert not from_env.write_ahead and not from_env.bodies


@pytest.mark.parametrize(("table", "message"), [
    ({"on_full": "wait"}, "[audit] on_full: expected one of 'block', 'drop', got 'wait'"),
    ({"writer_nice": 20}, "[audit] writer_nice: expected 0 to 19, got 20"),
    ({"handoff_bytes": 1000}, "[audit] handoff_bytes: expected at least 1 MiB, got 1000"),
    ({"batch_size": 0}, "[audit] batch_size: expected a number >= 1, got 0"),
    ({"write_ahead": "maybe"}, "[audit] write_ahead: expected true, false or 'durable', "
                               "got 'maybe'"),
    ({"max_age": "soon"}, "[audit] max_age: expected a duration"),
])
def test_a_bad_value_is_one_line_naming_the_key(tmp_path, table, message):
    with pytest.raises(ConfigError) as info:
        audit_config(table, tmp_path)
    assert str(info.value).startswith(message)


def test_an_unknown_key_names_the_nearest_one(tmp_path):
    """A typo in [audit] stops the server and the commands with one line naming the fix."""
    code, output = run_cli(tmp_path, "audit", ["config", "check", "--json"],
                           "[audit]\nmax_agee = \"90d\"\n")
    assert code == 1
    problems = check_problems(output, "audit")
    assert len(problems) == 1
    assert "[audit] max_agee: unknown setting; did you mean `max_age`?" in problems[0]
    code, output = run_cli(tmp_path, "audit", ["audit", "query"], "[audit]\nbodys = false\n")
    assert code != 0 and "[audit] bodys: unknown setting; did you mean `bodies`?" in output
