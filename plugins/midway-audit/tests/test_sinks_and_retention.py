"""The JSONL sink (rotation, hashes that chain), retention from config, metrics."""

from __future__ import annotations

import itertools
import urllib.request

import anthropic
import orjson
from click.testing import CliRunner
from conftest import committed, data_dir, flush, records, service

from midway.cli import cli
from midway.testing import wait_for


def send(running, n: int) -> None:
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0)
    for i in range(n):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                               messages=[{"role": "user", "content": f"request {i} " * 20}])


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
