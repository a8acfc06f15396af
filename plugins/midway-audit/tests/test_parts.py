"""Request bodies stored by parts: repeated pieces (system prompt, tools, earlier messages)
are stored once, bodies come back whole, and the chain still covers every byte."""

from __future__ import annotations

import sqlite3

import anthropic
import orjson
from click.testing import CliRunner
from conftest import data_dir, flush, get, records, service

from midway.cli import cli
from midway.testing import pg_query, wait_for

SYSTEM = "You are a careful coding agent working in a large repository. " * 40  # ~2.5 KB
TOOLS = [{"name": f"Tool{i}", "description": "Does one precise thing. " * 10,
          "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}}}
         for i in range(8)]


def conversation(turns: int) -> list[dict]:
    """A session as Claude Code resends it: every earlier turn, each turn over 1 KB."""
    messages: list[dict] = []
    for i in range(turns):
        messages.append({"role": "user", "content": f"turn {i}: " + "please refactor. " * 80})
        messages.append({"role": "assistant", "content": f"done {i}: " + "I changed it. " * 90})
    messages.append({"role": "user", "content": "and now?"})
    return messages


def run_session(running, turns: int) -> list[str]:
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0)
    ids = []
    for t in range(turns):
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=5, system=SYSTEM, tools=TOOLS,
            messages=conversation(t))
        ids.append(raw.headers["x-midway-request-id"])
    wait_for(lambda: len(records(running)) == turns)
    return ids


def test_parts_are_stored_once_and_bodies_come_back_whole(fake_upstream, audited):
    running = audited(jsonl="audit.jsonl")
    ids = run_session(running, 6)
    last = get(running, ids[-1])
    body = orjson.loads(last["request_body"])
    assert body["system"] == SYSTEM and body["tools"] == TOOLS
    assert body["messages"] == conversation(5)
    assert last["request_parts"] is True
    # full-text search reaches into parts
    assert {r["id"] for r in records(running, text="turn 4: please")} == {ids[-1]}
    db = sqlite3.connect(data_dir(running) / "audit.db", isolation_level=None)
    # system + tools + 2 messages per turn: each stored once, however often it was resent
    assert db.execute("SELECT COUNT(*) FROM audit_parts").fetchone()[0] == 2 + 2 * 5
    templates = sum(len(r[0]) for r in db.execute("SELECT request_body FROM audit_records"))
    parts = db.execute("SELECT SUM(LENGTH(body)) FROM audit_parts").fetchone()[0]
    whole = sum(len(get(running, i)["request_body"]) for i in ids)
    assert templates + parts < whole / 3  # each piece once, not once per turn
    flush(running)

    d = ["--data-dir", str(data_dir(running))]
    out = CliRunner().invoke(cli, ["audit", "verify", "--json", *d])
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(cli, ["audit", "verify", "--jsonl",
                                   str(data_dir(running) / "audit.jsonl")])
    assert out.exit_code == 0, out.output
    export = data_dir(running) / "export.jsonl"
    CliRunner().invoke(cli, ["audit", "export", "-o", str(export), *d])
    assert orjson.loads(export.read_bytes().splitlines()[-1])["request_body"] == \
        last["request_body"]
    out = CliRunner().invoke(cli, ["audit", "verify", "--jsonl", str(export)])
    assert out.exit_code == 0, out.output

    # an edited part, then a missing one, is a broken chain at the first record using it
    db.execute("UPDATE audit_parts SET body = replace(body, 'careful', 'careless')")
    out = CliRunner().invoke(cli, ["audit", "verify", "--json", *d])
    result = orjson.loads(out.output)
    assert out.exit_code == 1 and result["broken_seq"] == 1 and "edited" in result["reason"]
    db.execute("DELETE FROM audit_parts WHERE body LIKE '%careless%'")
    result = orjson.loads(CliRunner().invoke(cli, ["audit", "verify", "--json", *d]).output)
    assert result["broken_seq"] == 1 and "missing" in result["reason"]


def test_pruning_collects_parts_nobody_refers_to(fake_upstream, audited):
    running = audited()
    run_session(running, 4)
    flush(running)
    d = ["--data-dir", str(data_dir(running))]
    db = sqlite3.connect(data_dir(running) / "audit.db", isolation_level=None)
    assert db.execute("SELECT COUNT(*) FROM audit_parts").fetchone()[0] == 2 + 2 * 3
    out = CliRunner().invoke(cli, ["audit", "prune", "--max-rows", "1", *d])
    assert out.exit_code == 0
    # the last record refers to system, tools and all 3 earlier turns: nothing to collect
    assert db.execute("SELECT COUNT(*) FROM audit_parts").fetchone()[0] == 2 + 2 * 3
    out = CliRunner().invoke(cli, ["audit", "prune", "--max-rows", "0", *d])
    assert out.exit_code == 0 and "pruned 1" in out.output
    assert db.execute("SELECT COUNT(*) FROM audit_parts").fetchone()[0] == 0


def send_first_turn(running) -> dict:
    """The session's first turn sent again; its request body as audit recorded it."""
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=5, system=SYSTEM, tools=TOOLS,
        messages=conversation(1))
    midway_id = raw.headers["x-midway-request-id"]
    wait_for(lambda: get(running, midway_id) is not None)
    return orjson.loads(get(running, midway_id)["request_body"])


def test_a_pruned_part_is_written_again_when_needed(fake_upstream, audited):
    running = audited()
    run_session(running, 2)
    running.call(service(running).store.prune(None, 0))  # everything, parts included
    db = sqlite3.connect(data_dir(running) / "audit.db", isolation_level=None)
    assert db.execute("SELECT COUNT(*) FROM audit_parts").fetchone()[0] == 0
    assert send_first_turn(running)["system"] == SYSTEM
    assert running.call(service(running).verify())["ok"]


def test_parts_on_postgres(fake_upstream, audited, pg_config):
    running = audited(**pg_config)
    ids = run_session(running, 3)
    body = orjson.loads(get(running, ids[-1])["request_body"])
    assert body["messages"] == conversation(2) and body["system"] == SYSTEM
    assert [r["id"] for r in records(running, text="TURN 1: please")] == [ids[-1]]
    assert running.call(service(running).verify())["ok"]

    def parts_count() -> int:
        [row] = pg_query(pg_config["store"], "SELECT COUNT(*) FROM audit_parts",
                         schema=pg_config["schema"])
        return int(row[0])

    assert parts_count() == 2 + 2 * 2
    assert running.call(service(running).store.prune(None, 1)) == 2
    assert parts_count() == 2 + 2 * 2  # all still used by the last record
    assert running.call(service(running).verify())["ok"]
    assert running.call(service(running).store.prune(None, 0)) == 1
    assert parts_count() == 0


def test_a_part_deleted_with_expired_bodies_is_written_again_when_needed(fake_upstream,
                                                                         audited):
    """Body retention deletes the parts only expired records used; the writer process, which
    remembers the parts it stored, must not take them for stored when a later request sends
    them again (a session resumed, an old client version's system prompt)."""
    running = audited(body_max_age=1)
    db = sqlite3.connect(data_dir(running) / "audit.db", isolation_level=None)
    resend_after_expiry(running, lambda: db.execute("SELECT COUNT(*) FROM audit_parts"
                                                    ).fetchone()[0])


def test_a_part_deleted_with_expired_bodies_on_postgres(fake_upstream, audited, pg_config):
    running = audited(body_max_age=1, **pg_config)

    def parts_count() -> int:
        [row] = pg_query(pg_config["store"], "SELECT COUNT(*) FROM audit_parts",
                         schema=pg_config["schema"])
        return int(row[0])

    resend_after_expiry(running, parts_count)


def resend_after_expiry(running, parts_count) -> None:
    run_session(running, 2)
    store = service(running).store  # the relay's: another process than the writer's
    expired, _ = running.call(store.expire_bodies(0.0))
    assert expired == 2
    assert parts_count() == 0
    body = send_first_turn(running)
    assert body["system"] == SYSTEM and body["messages"] == conversation(1)
    assert parts_count() == 2 + 2
    assert running.call(service(running).verify())["ok"]
