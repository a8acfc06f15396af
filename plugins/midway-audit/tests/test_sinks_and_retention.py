"""The JSONL sink (rotation, hashes that chain), retention from config, metrics."""

from __future__ import annotations

import itertools
import sqlite3
import urllib.request

import anthropic
import orjson
from click.testing import CliRunner
from conftest import committed, data_dir, flush, get, records, service

from midway.cli import cli
from midway.testing import wait_for
from midway_audit.config import AuditConfig


def send(running, n: int, words: int = 20) -> None:
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0)
    for i in range(n):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                               messages=[{"role": "user", "content": f"request {i} " * words}])


def test_jsonl_sink_rotates_by_size_and_lines_chain(fake_upstream, audited):
    running = audited(jsonl="logs/audit.jsonl", jsonl_max_bytes=4000, jsonl_backups=2,
                      batch_size=1)
    send(running, 12)
    wait_for(lambda: len(records(running)) == 12)
    flush(running)
    logs = data_dir(running) / "logs"
    names = sorted(p.name for p in logs.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]  # older ones deleted
    for path in logs.iterdir():
        assert path.stat().st_size <= 4000
    lines = []
    for name in ("audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"):
        lines += [orjson.loads(line) for line in (logs / name).read_bytes().splitlines()]
    seqs = [r["seq"] for r in lines]
    assert seqs == list(range(seqs[0], 13))  # the newest, contiguous, in order
    for before, after in itertools.pairwise(lines):
        assert after["prev_hash"] == before["hash"]
    assert "request 11" in lines[-1]["request_body"]

    # the shipped files verify on their own, oldest first; an edited line is found
    args = ["audit", "verify", "--json"]
    for name in ("audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"):
        args += ["--jsonl", str(logs / name)]
    out = CliRunner().invoke(cli, args)
    result = orjson.loads(out.output)
    assert out.exit_code == 0 and result["ok"] and result["checked"] == len(lines)
    assert result["head_hash"] == lines[-1]["hash"]
    tampered = (logs / "audit.jsonl.1").read_bytes().replace(b'"status":200', b'"status":201', 1)
    (logs / "audit.jsonl.1").write_bytes(tampered)
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 1 and "edited" in orjson.loads(out.output)["reason"]


def test_the_writer_process_sees_environment_overrides(fake_upstream, audited, monkeypatch):
    """The writer builds its config from the same table and MIDWAY_AUDIT__* variables as the
    relay (it inherits the environment): only the writer writes the JSONL sink."""
    monkeypatch.setenv("MIDWAY_AUDIT__JSONL", "from-env/audit.jsonl")
    running = audited(jsonl_max_bytes="1MiB")
    send(running, 2)
    wait_for(lambda: len(records(running)) == 2)
    flush(running)
    lines = (data_dir(running) / "from-env" / "audit.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["seq"] for line in lines] == [1, 2]


def test_retention_from_config_prunes_a_prefix_and_keeps_the_chain(fake_upstream, audited):
    running = audited(max_rows=3, prune_interval=0.05)
    send(running, 7)
    wait_for(lambda: committed(running) == 7 and len(records(running)) == 3, timeout=20)
    assert [r["seq"] for r in records(running)] == [7, 6, 5]
    result = running.call(service(running).verify())
    assert result["ok"] and result["anchor_seq"] == 4 and result["checked"] == 3

    with urllib.request.urlopen(f"{running.url}/metrics") as resp:
        metrics = resp.read().decode()
    assert "midway_audit_records_written_total 7.0" in metrics
    assert "midway_audit_queue_depth" in metrics
    with urllib.request.urlopen(f"{running.url}/_midway/audit/status") as resp:
        status = orjson.loads(resp.read())
    assert status["committed_seq"] == 7 and status["dropped"] == 0


def test_bodies_expire_by_default_and_the_records_still_verify(fake_upstream, audited):
    """Body retention (30 days by default; 1 s here): a sweep deletes old bodies and their
    parts, keeps the metadata, and the chain — metadata included — still verifies."""
    default = audited()
    assert default.midway.options("audit", AuditConfig).body_max_age == 30 * 86400
    running = audited(body_max_age=1, prune_interval=0.05)
    send(running, 3, words=200)  # long enough that each request body is stored by parts
    wait_for(lambda: len(records(running)) == 3)
    ids = [r["id"] for r in records(running)]

    def expired() -> bool:
        found = [get(running, i) for i in ids]
        return all(r is not None and r["request_body"] is None and r["response_body"] is None
                   for r in found)
    wait_for(expired, timeout=20)
    record = get(running, ids[0])
    assert record is not None and record["model"] == "claude-sonnet-4-6"
    assert record["status"] == 200 and len(record["request_body_sha256"]) == 64
    result = running.call(service(running).verify())
    assert result["ok"] and result["checked"] == 3
    flush(running)
    directory = data_dir(running)
    db = sqlite3.connect(directory / "audit.db", isolation_level=None)
    assert db.execute("SELECT COUNT(*) FROM audit_parts").fetchone() == (0,)
    assert db.execute("SELECT COUNT(*) FROM audit_records WHERE request_body IS NOT NULL "
                      "OR response_body IS NOT NULL").fetchone() == (0,)

    # an export of expired records verifies on its own
    exported = directory / "export.jsonl"
    out = CliRunner().invoke(cli, ["audit", "export", "--output", str(exported),
                                   "--data-dir", str(directory)])
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(cli, ["audit", "verify", "--json", "--jsonl", str(exported)])
    assert out.exit_code == 0 and orjson.loads(out.output)["checked"] == 3

    # the metadata of an expired record is still covered by its hash
    db.execute("UPDATE audit_records SET data = replace(data, '\"status\":200', "
               "'\"status\":201') WHERE seq = 2")
    out = CliRunner().invoke(cli, ["audit", "verify", "--json", "--data-dir", str(directory)])
    result = orjson.loads(out.output)
    assert out.exit_code == 1 and result["broken_seq"] == 2 and "edited" in result["reason"]
