"""`midway audit query|show|tail|export` against a real store."""

from __future__ import annotations

import csv
import io

import anthropic
import orjson
from click.testing import CliRunner
from conftest import data_dir, flush, records

from midway.cli import cli
from midway.testing import Reply, wait_for


def test_query_show_tail_export(fake_upstream, audited):
    running = audited()
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0)
    for model in ("claude-sonnet-4-6", "claude-haiku-4-5", "claude-sonnet-4-6"):
        client.messages.create(model=model, max_tokens=5,
                               messages=[{"role": "user", "content": f"hello {model}"}])
    fake_upstream.reply(Reply(status=400, error_type="invalid_request_error",
                              error_message="prompt is too long"))
    try:
        client.messages.create(model="claude-opus-4-8", max_tokens=5,
                               messages=[{"role": "user", "content": "too long"}])
    except anthropic.BadRequestError:
        pass
    wait_for(lambda: len(records(running)) == 4)
    flush(running)
    d = ["--data-dir", str(data_dir(running))]
    run = CliRunner().invoke

    out = run(cli, ["audit", "query", "--json", *d])
    assert out.exit_code == 0, out.output
    listed = orjson.loads(out.output)
    assert [r["seq"] for r in listed] == [4, 3, 2, 1]  # newest first
    assert "request_body" not in listed[0]

    out = run(cli, ["audit", "query", "--json", "--model", "claude-sonnet-4-6", *d])
    assert len(orjson.loads(out.output)) == 2
    out = run(cli, ["audit", "query", "--json", "--status", "4xx", *d])
    assert [r["model"] for r in orjson.loads(out.output)] == ["claude-opus-4-8"]
    out = run(cli, ["audit", "query", "--json", "--since", "1h", "--limit", "1", *d])
    assert len(orjson.loads(out.output)) == 1
    out = run(cli, ["audit", "query", "--json", "--until", "2000-01-01T00:00:00Z", *d])
    assert orjson.loads(out.output) == []
    out = run(cli, ["audit", "query", "--json", "--text", "HELLO claude-haiku", *d])
    assert [r["model"] for r in orjson.loads(out.output)] == ["claude-haiku-4-5"]
    out = run(cli, ["audit", "query", *d])
    assert out.exit_code == 0 and "claude-opus-4-8" in out.output and "400" in out.output
    # A person's table fits 100 columns, and keeps whole the ids to paste into `show`.
    assert max(len(line) for line in out.output.splitlines()) <= 100, out.output
    assert listed[0]["id"] in out.output and "claude-sonnet-4-6" in out.output
    wide = run(cli, ["audit", "query", "--wide", *d]).output
    assert max(len(line) for line in wide.splitlines()) > 100
    assert "TTFB ms" in wide and "TTFB ms" not in out.output
    tail = run(cli, ["audit", "tail", "-n", "2", "--count", "2", *d]).output
    assert max(len(line) for line in tail.splitlines()) <= 100, tail

    out = run(cli, ["audit", "show", listed[0]["id"], *d])
    assert out.exit_code == 0
    assert "prompt is too long" in out.output and '"too long"' in out.output
    # Values as JSON writes them, never Python's spelling.
    fields = dict(line.split(": ", 1) for line in out.output.split("\n---")[0].splitlines()
                  if ": " in line)
    assert not {v for v in fields.values() if v in ("None", "True", "False")}, fields
    assert fields["streaming".rjust(22)] in ("true", "false")
    assert "null" in fields.values()
    assert run(cli, ["audit", "show", "mw_nope", *d]).exit_code == 1

    out = run(cli, ["audit", "tail", "-n", "2", "--count", "2", "--json", *d])
    assert [orjson.loads(line)["seq"] for line in out.output.splitlines()] == [3, 4]

    out = run(cli, ["audit", "export", "--format", "jsonl", *d])
    exported = [orjson.loads(line) for line in out.output.splitlines()]
    assert [r["seq"] for r in exported] == [1, 2, 3, 4]
    assert exported[0]["hash"] == exported[1]["prev_hash"]
    assert "hello claude-sonnet-4-6" in exported[0]["request_body"]

    exported_path = data_dir(running) / "export.jsonl"
    out = run(cli, ["audit", "export", "-o", str(exported_path), *d])
    assert out.exit_code == 0
    out = run(cli, ["audit", "verify", "--jsonl", str(exported_path)])
    assert out.exit_code == 0 and out.output.startswith("ok: 4 records verified")

    out = run(cli, ["audit", "export", "--format", "csv", "--no-bodies", "--model",
                    "claude-haiku-4-5", *d])
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert len(rows) == 1 and rows[0]["model"] == "claude-haiku-4-5"
    assert rows[0]["status"] == "200" and int(rows[0]["input_tokens"]) > 0
    assert "request_body" not in rows[0]
