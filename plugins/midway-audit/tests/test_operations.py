"""``midway config check`` and ``midway db upgrade`` on the audit store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from midway.cli import cli
from midway.testing import free_port, pg_query


def run(tmp_path: Path, monkeypatch: Any, command: list[str], toml: str) -> tuple[int, str]:
    monkeypatch.setenv("MIDWAY_PLUGINS", "audit")
    config = tmp_path / "midway.toml"
    config.write_text(toml)
    result = CliRunner().invoke(cli, [*command, "--config", str(config),
                                      "--data-dir", str(tmp_path / "data")])
    return result.exit_code, result.output


def audit_problems(output: str) -> list[str]:
    return next(r for r in json.loads(output) if r["subject"] == "audit")["problems"]


def test_missing_schema_then_upgrade_then_old_schema(tmp_path, monkeypatch, postgres_dsn,
                                                     pg_schema_factory):
    schema = pg_schema_factory(create=False)
    toml = f'[audit]\nstore = "{postgres_dsn}"\nschema = "{schema}"\n'
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
    assert code == 1
    [problem] = audit_problems(out)
    assert f"schema '{schema}' does not exist" in problem and "midway db upgrade" in problem

    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], toml)
    assert code == 0, out
    assert "created table audit_records" in out and "created table audit_chain" in out
    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], toml)
    assert (code, out.strip()) == (0, "audit: up to date")  # idempotent
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
    assert code == 0 and audit_problems(out) == []

    # A schema from before a column existed.
    pg_query(postgres_dsn, "ALTER TABLE audit_records DROP COLUMN upstream_request_id",
             schema=schema)
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
    [problem] = audit_problems(out)
    assert "audit_records is older" in problem and "upstream_request_id" in problem
    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], toml)
    assert code == 0 and "added column(s) upstream_request_id to audit_records" in out
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"], toml)
    assert code == 0 and audit_problems(out) == []


def test_unreachable_postgres_and_bad_config(tmp_path, monkeypatch):
    dsn = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/test"
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"],
                    f'[audit]\nstore = "{dsn}"\n')
    assert code == 1
    [problem] = audit_problems(out)
    assert "unreachable" in problem and "hunter2" not in problem  # the password is masked
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"],
                    '[audit]\nstore = "mysql://x"\n')
    assert code == 1 and "unknown scheme" in audit_problems(out)[0]


def test_sqlite_store_checked_and_created(tmp_path, monkeypatch):
    (tmp_path / "junk.db").write_bytes(b"not a database, not at all" * 100)
    code, out = run(tmp_path, monkeypatch, ["config", "check", "--json"],
                    f'[audit]\nstore = "sqlite://{tmp_path}/junk.db"\n')
    assert code == 1 and "not a usable SQLite database" in audit_problems(out)[0]
    code, out = run(tmp_path, monkeypatch, ["db", "upgrade"], '[audit]\nstore = "sqlite"\n')
    assert code == 0 and "created" in out and (tmp_path / "data" / "audit.db").exists()
    code, out = run(tmp_path, monkeypatch, ["config", "check"], '[audit]\nstore = "sqlite"\n')
    assert code == 0 and "audit: ok" in out


def test_store_setting_follows_the_one_grammar(tmp_path, monkeypatch):
    """``store`` is read by midway.storage.parse_store: the default file, paths (relative ones
    under the data dir), sqlite:/// URLs and env: references land where every plugin's do."""
    from midway_audit.config import AuditConfig, AuditConfigError

    monkeypatch.setenv("AUDIT_STORE_TEST", f"sqlite://{tmp_path}/from-env.db")
    for value, path in [("sqlite", tmp_path / "audit.db"),
                        ("trail/audit.db", tmp_path / "trail" / "audit.db"),
                        (f"sqlite://{tmp_path}/abs.db", tmp_path / "abs.db"),  # sqlite:///tmp/…
                        ("env:AUDIT_STORE_TEST", tmp_path / "from-env.db")]:
        assert AuditConfig.from_table({"store": value}, tmp_path).store.path == path
    pg = AuditConfig.from_table({"store": "postgresql://u:secret@h/db"}, tmp_path)
    assert pg.is_postgres and "secret" not in pg.describe_store()
    try:
        AuditConfig.from_table({"store": "sqlite3"}, tmp_path)  # a typo is not a new file
    except AuditConfigError as exc:
        assert str(exc).startswith("[audit] store:")
    else:
        raise AssertionError("a bare word is not a store")
