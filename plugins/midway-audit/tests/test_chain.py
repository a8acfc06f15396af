"""The hash chain: `midway audit verify` passes on an intact store and names the first
broken link after an edit, a deletion or a truncated tail; pruning keeps it verifiable."""

from __future__ import annotations

import sqlite3

import anthropic
import orjson
from click.testing import CliRunner
from conftest import data_dir, flush, records

from midway.cli import cli
from midway.testing import wait_for
from midway_audit.chain import content_digest, content_digest_v1, link_hash


def send(running, n: int) -> None:
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0)
    for i in range(n):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                               messages=[{"role": "user", "content": f"request {i}"}])
    wait_for(lambda: len(records(running)) == n)


def verify(directory, env=None) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["audit", "verify", "--json", "--data-dir",
                                      str(directory)], env=env)
    assert result.output, result
    return result.exit_code, orjson.loads(result.output)


def test_verify_detects_edits_deletions_and_truncation(fake_upstream, audited):
    running = audited()
    send(running, 6)
    flush(running)
    directory = data_dir(running)
    code, result = verify(directory)
    assert (code, result["ok"], result["checked"], result["head_seq"]) == (0, True, 6, 6)

    db = sqlite3.connect(directory / "audit.db", isolation_level=None)
    original = db.execute("SELECT data FROM audit_records WHERE seq = 3").fetchone()[0]
    # an edit inside the hashed record
    db.execute("UPDATE audit_records SET data = replace(data, '\"status\":200', "
               "'\"status\":201') WHERE seq = 3")
    code, result = verify(directory)
    assert (code, result["ok"], result["broken_seq"], result["checked"]) == (1, False, 3, 2)
    assert "edited" in result["reason"]
    assert result["broken_request_id"] == orjson.loads(original)["id"]

    # an edit of a queried column only (data untouched)
    db.execute("UPDATE audit_records SET data = ? WHERE seq = 3", (original,))
    assert verify(directory)[0] == 0
    db.execute("UPDATE audit_records SET principal = 'someone-else' WHERE seq = 4")
    code, result = verify(directory)
    assert (code, result["broken_seq"]) == (1, 4)
    assert "principal" in result["reason"]
    db.execute("UPDATE audit_records SET principal = (SELECT principal FROM audit_records "
               "WHERE seq = 5) WHERE seq = 4")

    # re-hashing an edited record does not help: the next link breaks
    data, req, resp, prev = db.execute("SELECT data, request_body, response_body, prev_hash "
                                       "FROM audit_records WHERE seq = 2").fetchone()
    forged = data.replace('"status":200', '"status":500')
    digest = link_hash(prev, 2, content_digest(forged, req, resp))
    db.execute("UPDATE audit_records SET data = ?, status = 500, hash = ? WHERE seq = 2",
               (forged, digest))
    code, result = verify(directory)
    assert (code, result["broken_seq"]) == (1, 3)
    assert "prev_hash" in result["reason"]

    # a deleted record in the middle, and a deleted tail
    db.execute("DELETE FROM audit_records WHERE seq <= 2")
    db.execute("UPDATE audit_chain SET anchor_seq = 0")
    code, result = verify(directory)
    assert (code, result["broken_seq"]) == (1, 3)
    assert "1..2 missing" in result["reason"]


def test_truncated_tail_and_pruning_keep_the_chain_honest(fake_upstream, audited):
    running = audited()
    send(running, 8)
    flush(running)
    directory = data_dir(running)
    runner = CliRunner()
    result = runner.invoke(cli, ["audit", "prune", "--max-rows", "3", "--data-dir",
                                 str(directory)])
    assert result.exit_code == 0 and "pruned 5" in result.output
    code, result = verify(directory)
    assert (code, result["ok"], result["checked"], result["anchor_seq"]) == (0, True, 3, 5)

    db = sqlite3.connect(directory / "audit.db", isolation_level=None)
    db.execute("DELETE FROM audit_records WHERE seq = 8")
    code, result = verify(directory)
    assert (code, result["ok"]) == (1, False)
    assert "missing" in result["reason"]
    human = runner.invoke(cli, ["audit", "verify", "--data-dir", str(directory)])
    assert human.exit_code == 1 and "BROKEN" in human.output


def test_chain_continues_across_restarts(fake_upstream, midway_factory, tmp_path):
    import midway_audit

    config = {"audit": {"store": f"sqlite://{tmp_path}/shared.db"}}
    first = midway_factory(plugins=[("audit", midway_audit)], config=config)
    send(first, 3)
    flush(first)
    second = midway_factory(plugins=[("audit", midway_audit)], config=config)
    send_more = anthropic.Anthropic(base_url=second.url, api_key="k", max_retries=0)
    send_more.messages.create(model="claude-haiku-4-5", max_tokens=5,
                              messages=[{"role": "user", "content": "again"}])
    wait_for(lambda: len(records(second)) == 4)
    assert records(second)[0]["seq"] == 4
    assert running_verify(second)["ok"]


def running_verify(running) -> dict:
    return running.call(running.midway.services["audit"].verify())


def test_a_store_written_before_body_retention_still_verifies_and_keeps_its_bodies(
        fake_upstream, audited):
    """Records of the chain's first form (bodies hashed themselves) verify as they are; body
    retention leaves their bodies alone rather than break the chain."""
    running = audited(body_max_age=0)
    send(running, 3)
    flush(running)
    directory = data_dir(running)
    db = sqlite3.connect(directory / "audit.db", isolation_level=None)
    prev = "0" * 64
    for seq, data, req, resp in db.execute("SELECT seq, data, request_body, response_body "
                                           "FROM audit_records ORDER BY seq").fetchall():
        digest = link_hash(prev, seq, content_digest_v1(data, req, resp))
        db.execute("UPDATE audit_records SET prev_hash = ?, hash = ? WHERE seq = ?",
                   (prev, digest, seq))
        prev = digest
    db.execute("UPDATE audit_chain SET head_hash = ?", (prev,))
    assert verify(directory)[1]["ok"]

    again = audited(store=str(directory / "audit.db"), body_max_age=1, prune_interval=0.05)
    store = again.midway.services["audit"].store
    assert again.call(store.head()).count == 3  # the same store
    expired, _ = again.call(store.expire_bodies(0.0))
    assert expired == 0
    assert db.execute("SELECT COUNT(*) FROM audit_records WHERE request_body IS NULL"
                      ).fetchone() == (0,)
    db.execute("UPDATE audit_records SET data = replace(data, '\"status\":200', "
               "'\"status\":201') WHERE seq = 2")
    code, result = verify(directory)
    assert (code, result["broken_seq"]) == (1, 2)
