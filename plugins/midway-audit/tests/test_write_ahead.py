"""Write-ahead intents: committed before the upstream is contacted, removed with the record,
and turned into interrupted records only for instances that are dead (SQLite and
PostgreSQL). The kill -9 end-to-end test is in test_crash.py."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from conftest import data_dir, flush, get, records

from midway import Response, hookimpl
from midway.options import load_table
from midway.testing import Reply, wait_for
from midway_audit.chain import verify
from midway_audit.config import AuditConfig
from midway_audit.handoff.intents import INTERRUPTED_ERROR, IntentLog, interrupted_rows
from midway_audit.handoff.writer import AuditWriter
from midway_audit.record import Pending, prepare
from midway_audit.redact import Redactor
from midway_audit.stores.queries import Filter
from midway_audit.stores.store import AuditStore

MESSAGES = [{"role": "user", "content": "hello"}]


def intents(running: Any) -> list[tuple[str, str]]:
    with sqlite3.connect(data_dir(running) / "audit.db") as con:
        return con.execute("SELECT request_id, data FROM audit_intents").fetchall()


def test_durable_intent_is_committed_before_the_upstream_is_asked_and_goes_with_the_record(
        fake_upstream, audited):
    released = threading.Event()
    seen: list[list[tuple[str, str]]] = []
    running = audited(write_ahead="durable")

    def reply(recorded: Any) -> Reply:
        # runs when the request reaches the upstream: its intent must be committed already
        seen.append(intents(running))
        released.set()
        return Reply()

    fake_upstream.reply(reply)
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-wa", max_retries=0)
    answer = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES)
    midway_id = answer.headers["x-midway-request-id"]
    assert released.is_set()
    [(intent_id, data)] = seen[0]
    assert intent_id == midway_id
    intent = orjson.loads(data)
    assert intent["model"] == "claude-sonnet-4-6"
    assert intent["method"] == "POST" and intent["path"] == "/v1/messages"
    assert intent["client_address"] == "127.0.0.1"
    assert "sk-ant-wa" not in data  # the key is no principal name, and never stored
    wait_for(lambda: len(records(running)) == 1)
    assert intents(running) == []  # deleted in the record's transaction
    assert get(running, midway_id)["status"] == 200


def test_intent_of_a_long_request_is_committed_while_it_runs(fake_upstream, audited):
    """Default write-ahead: the intent is handed over at once and committed after
    ``batch_linger`` unless the record came first; a request still running has it on disk."""
    running = audited(batch_linger=0.01)
    released = threading.Event()
    committed: list[list[tuple[str, str]]] = []

    def reply(recorded: Any) -> Reply:
        # the upstream holds the request until its intent is on disk (or the test gives up)
        wait_for(lambda: bool(intents(running)), timeout=10)
        committed.append(intents(running))
        released.set()
        return Reply()

    fake_upstream.reply(reply)
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-wa", max_retries=0)
    answer = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES)
    assert released.is_set()
    [(intent_id, data)] = committed[0]
    assert intent_id == answer.headers["x-midway-request-id"]
    assert "sk-ant-wa" not in data
    wait_for(lambda: len(records(running)) == 1)
    assert intents(running) == []


def test_plugin_answers_write_no_intent_and_get_their_record(fake_upstream, audited):
    class Answering:
        @hookimpl(tryfirst=True)
        def pre_request(self, exchange):
            return Response(body={"type": "message", "id": "msg_c", "role": "assistant",
                                  "model": "claude-sonnet-4-6", "content": [],
                                  "stop_reason": "end_turn",
                                  "usage": {"input_tokens": 0, "output_tokens": 0}})

    running = audited(extra_plugins=[("answering", Answering())])
    metrics = running.midway.metrics.registry
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-wa", max_retries=0)
    client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES)
    wait_for(lambda: len(records(running)) == 1)
    assert records(running)[0]["answered_by"] == "answering"
    assert not fake_upstream.messages_requests
    assert metrics.get_sample_value("midway_audit_intents_total", {"result": "ok"}) in (None, 0)


def test_write_ahead_can_be_turned_off(fake_upstream, audited):
    running = audited(write_ahead=False)
    fake_upstream.reply(Reply())
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-wa", max_retries=0)
    client.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES)
    wait_for(lambda: len(records(running)) == 1)
    assert not (data_dir(running) / "audit-instances").exists()
    assert running.midway.metrics.registry.get_sample_value(
        "midway_audit_intents_total", {"result": "ok"}) in (None, 0)
    flush(running)


# -- recovery, against both stores ----------------------------------------------------------

def _config(kind: str, tmp_path: Path, pg_config: dict[str, Any]) -> AuditConfig:
    table = pg_config if kind == "postgres" else {"store": f"sqlite:///{tmp_path}/audit.db"}
    return load_table(AuditConfig, "audit", table, data_dir=tmp_path)


async def _opened(config: AuditConfig) -> AuditStore:
    store = AuditStore(config)
    await store.open()
    return store


def _intent(request_id: str, ts: float) -> tuple[str, float, str]:
    meta = {"id": request_id, "ts": ts, "principal": "p1", "principal_name": "dev",
            "team": "t", "principal_kind": "key", "client_address": "127.0.0.1",
            "method": "POST", "path": "/v1/messages", "model": "claude-sonnet-4-6",
            "upstream": "anthropic", "upstream_key": None}
    return request_id, ts, orjson.dumps(meta, option=orjson.OPT_SORT_KEYS).decode()


def _die(store: AuditStore) -> None:
    """What kill -9 does to an instance's liveness lock: the OS releases it; the SQLite lock
    file stays behind."""
    held = store.liveness._held  # type: ignore[attr-defined]
    held.close()
    store.liveness._held = None  # type: ignore[attr-defined]


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_only_dead_instances_intents_become_interrupted_records(kind, tmp_path, pg_config):
    asyncio.run(_recovery(_config(kind, tmp_path, pg_config), tmp_path))


async def _recovery(config: AuditConfig, tmp_path: Path) -> None:
    redactor = Redactor()
    live, dead, recovering = [await _opened(config) for _ in range(3)]
    try:
        await live.claim(101)
        await dead.claim(202)
        await live.intend(101, [_intent("live-1", 1.0)])
        await dead.intend(202, [_intent("dead-1", 2.0), _intent("dead-2", 3.0),
                                _intent("done", 4.0)])
        # "done" got its full record before the kill (its intent was deleted with it) ...
        await dead.append([prepare(Pending({"id": "done", "ts": 4.0, "principal": "p1",
                                            "model": "m", "status": 200,
                                            "upstream_request_id": None}, [], b"", None,
                                           None, None), redactor, 0, False)])
        # ... and an intent can only ever be written before its record; a stray duplicate
        # (written late) is still recovered at most once
        await dead.intend(202, [_intent("done", 4.0)])
        if config.is_postgres:
            await dead.close()  # the session ends, the advisory lock goes with it
        else:
            _die(dead)
        await recovering.claim(303)
        found = await recovering.recover(303, lambda found: interrupted_rows(found, redactor))
        assert found == 2
        assert await recovering.recover(303, lambda f: interrupted_rows(f, redactor)) == 0
        result = await verify(recovering)
        assert result.ok and result.checked == 3
        by_id = {r["id"]: r for r in await recovering.query(Filter(), 100)}
        assert set(by_id) == {"done", "dead-1", "dead-2"}  # never the live instance's
        for request_id in ("dead-1", "dead-2"):
            record = by_id[request_id]
            assert record["interrupted"] is True
            assert record["status"] is None and record["error"] == INTERRUPTED_ERROR
            assert record["principal"] == "p1" and record["model"] == "claude-sonnet-4-6"
            assert record["path"] == "/v1/messages" and record["bodies"] is False
        assert by_id["dead-1"]["seq"] < by_id["dead-2"]["seq"]  # in the order they began
        # The instance was alive after all (taken for dead): its real record of dead-1 comes
        # late. It supersedes the interrupted one — reads show one record, the real one.
        await live.append([prepare(Pending({"id": "dead-1", "ts": 2.0, "principal": "p1",
                                            "model": "m", "status": 200,
                                            "upstream_request_id": None}, [], b"", None,
                                           None, None), redactor, 0, False)])
        shown = {r["id"]: r for r in await recovering.query(Filter(), 100)}
        assert set(shown) == {"done", "dead-1", "dead-2"}
        assert shown["dead-1"]["status"] == 200 and not shown["dead-1"].get("interrupted")
        assert shown["dead-1"]["supersedes"] == by_id["dead-1"]["seq"]
        got = await recovering.get("dead-1")
        assert got is not None and got["status"] == 200
        result = await verify(recovering)
        assert result.ok and result.checked == 4  # both stay in the chain
    finally:
        for store in (live, dead, recovering):
            await store.close()
    # the live instance's intent is recovered once it is gone too
    again = await _opened(config)
    try:
        assert await again.recover(404, lambda f: interrupted_rows(f, redactor)) == 1
        assert (await verify(again)).ok
    finally:
        await again.close()


def test_a_running_writer_records_an_instance_that_dies_after_it_started(kind, pg_config,
                                                                         audited):
    # (pg_config first: its schema is dropped after midway, not under its running writer)
    table = pg_config if kind == "postgres" else {}
    running = audited(recover_interval=0.05, **table)
    # a peer on the same store, started (and killed) after this writer's start-up recovery
    peer = table or {"store": f"sqlite:///{data_dir(running)}/audit.db"}
    asyncio.run(_intend_and_die(load_table(AuditConfig, "audit", peer,
                                           data_dir=data_dir(running))))

    def recorded() -> dict[str, Any]:
        return {r["id"]: r for r in records(running)}

    wait_for(lambda: set(recorded()) == {"dead-1", "dead-2"}, timeout=20)
    for record in recorded().values():
        assert record["interrupted"] is True and record["error"] == INTERRUPTED_ERROR
    wait_for(lambda: running.midway.metrics.registry.get_sample_value(
        "midway_audit_records_recovered_total") == 2)


async def _intend_and_die(config: AuditConfig) -> None:
    store = await _opened(config)
    try:
        await store.claim(202)
        await store.intend(202, [_intent("dead-1", 2.0), _intent("dead-2", 3.0)])
        if config.is_postgres:
            await store.liveness.release()  # the session ends, the advisory lock goes with it
        else:
            _die(store)
    finally:
        await store.close()


# -- which records' transactions look for an intent ----------------------------------------

def test_settle_says_whether_an_intent_may_be_in_the_store(tmp_path):
    asyncio.run(_settling(_config("sqlite", tmp_path, {})))


async def _settling(config: AuditConfig) -> None:
    store = await _opened(config)
    try:
        log = IntentLog(store, Redactor(), 7)
        # added and settled before the commit loop runs (as in one wake-up's frames)
        log.add("dropped", orjson.dumps(_intent_frame("dropped")))
        log.add("replayed", orjson.dumps(_intent_frame("replayed")), replay=True)
        assert log.settle("dropped") is False  # its record came first: never written
        assert log.settle("replayed") is True  # a killed writer may have committed it
        assert log.settle("unknown") is True  # not this writer's intent
        await log.drain()
        assert await store.left_by(7) == []  # neither was written
        log.add("late", orjson.dumps(_intent_frame("late")))
        await log.drain()
        assert await store.left_by(7)  # committed ...
        assert log.settle("late") is True  # ... so its record's transaction deletes it
    finally:
        await store.close()


def _intent_frame(request_id: str) -> list[Any]:
    return [request_id, 1.0, "p1", None, None, "key", "127.0.0.1", None, None, "POST",
            "/v1/messages", "", "claude-sonnet-4-6", "anthropic", None]


def test_a_record_without_a_stored_intent_skips_the_lookups_a_stored_one_does_not(tmp_path):
    asyncio.run(_skipping(_config("sqlite", tmp_path, {})))


async def _skipping(config: AuditConfig) -> None:
    redactor = Redactor()
    store = await _opened(config)

    def row(request_id: str, stored: bool) -> Any:
        pending = Pending({"id": request_id, "ts": 1.0, "principal": "p1", "model": "m",
                           "status": 200, "upstream_request_id": None}, [], b"", None, None,
                          None, intent_stored=stored)
        return prepare(pending, redactor, 0, False)

    try:
        await store.intend(7, [_intent("kept", 1.0), _intent("deleted", 1.0)])
        # "kept" is flagged as never stored (which a writer only does when that is true):
        # its stray intent shows that no lookup ran; "deleted"'s goes with its record
        await store.append([row("kept", False), row("deleted", True)])
        assert [orjson.loads(d)["id"] for d in await store.left_by(7)] == ["kept"]
        assert (await verify(store)).ok
    finally:
        await store.close()


# -- a lingering intent goes in the next records' transaction --------------------------------

class _CountingStore(AuditStore):
    """Counts the intents' transactions of their own; fails the first ``failures`` appends
    that carry intents."""

    def __init__(self, config: AuditConfig, failures: int = 0) -> None:
        super().__init__(config)
        self.intends = 0
        self.failures = failures

    async def intend(self, instance: int, intents: list[tuple[str, float, str]]) -> None:
        self.intends += 1
        await super().intend(instance, intents)

    async def append(self, rows: list[Any], retrying: bool = False, intents: Any = (),
                     instance: int = 0) -> Any:
        if intents and self.failures:
            self.failures -= 1
            raise ConnectionError("database went away")
        return await super().append(rows, retrying, intents, instance)


def _pending(request_id: str, stored: bool) -> Pending:
    # now: the writer's first prune (max_age) would take a record of 1970 away
    return Pending({"id": request_id, "ts": time.time(), "principal": "p1", "model": "m",
                    "status": 200, "upstream_request_id": None}, [], b"", None, None, None,
                   intent_stored=stored)


class _Carrying:
    """An intent log and a records writer as the writer process has them, with a linger no
    test waits for: an intent stored now was written by a records' transaction."""

    def __init__(self, store: AuditStore, config: AuditConfig) -> None:
        redactor = Redactor()
        self.log = IntentLog(store, redactor, 7, linger=3600)
        self._commits: asyncio.Queue[None] = asyncio.Queue()
        self.writer = AuditWriter(store, config, redactor, intents=self.log,
                                  on_commit=lambda: self._commits.put_nowait(None))

    async def committed(self) -> None:
        """Wait for the records writer's next commit."""
        await asyncio.wait_for(self._commits.get(), 10)


def test_a_lingering_intent_goes_in_the_next_records_transaction(tmp_path):
    asyncio.run(_carrying(_config("sqlite", tmp_path, {})))


async def _carrying(config: AuditConfig) -> None:
    store = _CountingStore(config)
    await store.open()
    await store.claim(7)
    carrying = _Carrying(store, config)
    log, writer = carrying.log, carrying.writer
    await writer.start()
    try:
        log.add("slow", orjson.dumps(_intent_frame("slow")))
        log.add("quick", orjson.dumps(_intent_frame("quick")))
        await writer.submit(_pending("quick", log.settle("quick")))
        await carrying.committed()
        # "slow" is still running: its intent went in "quick"'s transaction, none of its own
        assert [orjson.loads(d)["id"] for d in await store.left_by(7)] == ["slow"]
        assert store.intends == 0 and log.written == 1 and log.done == 2 and not log.busy
        assert log.settle("slow") is True  # stored: its record's transaction deletes it
        await writer.submit(_pending("slow", True))
        await writer.stop()
        assert await store.left_by(7) == []
        assert [r["id"] for r in await store.query(Filter(), 10)] == ["slow", "quick"]
        assert (await verify(store)).ok
    finally:
        await store.close()


def test_an_intent_carried_by_a_records_transaction_outlives_a_killed_writer(tmp_path):
    asyncio.run(_carried_then_killed(_config("sqlite", tmp_path, {})))


async def _carried_then_killed(config: AuditConfig) -> None:
    store = _CountingStore(config)
    await store.open()
    await store.claim(7)
    carrying = _Carrying(store, config)
    log, writer = carrying.log, carrying.writer
    await writer.start()
    log.add("in-flight", orjson.dumps(_intent_frame("in-flight")))
    await writer.submit(_pending("done", False))
    await carrying.committed()
    _die(store)  # kill -9 of the writer (and its relay) before the request finished
    recovering = await _opened(config)
    try:
        await recovering.claim(8)
        redactor = Redactor()
        assert await recovering.recover(8, lambda f: interrupted_rows(f, redactor)) == 1
        by_id = {r["id"]: r for r in await recovering.query(Filter(), 10)}
        assert set(by_id) == {"done", "in-flight"}
        assert by_id["in-flight"]["interrupted"] is True
        assert (await verify(recovering)).ok
    finally:
        await recovering.close()
        await store.close()


def test_a_failed_records_transaction_leaves_its_intents_to_a_commit_of_their_own(tmp_path):
    asyncio.run(_carrying_fails(_config("sqlite", tmp_path, {})))


async def _carrying_fails(config: AuditConfig) -> None:
    store = _CountingStore(config, failures=1)
    await store.open()
    await store.claim(7)
    carrying = _Carrying(store, config)
    log, writer = carrying.log, carrying.writer
    await writer.start()
    try:
        log.add("slow", orjson.dumps(_intent_frame("slow")))
        await writer.submit(_pending("quick", False))
        await carrying.committed()  # retried, without the intent
        assert store.intends == 1 and log.written == 1 and log.failed == 0
        assert [orjson.loads(d)["id"] for d in await store.left_by(7)] == ["slow"]
        await writer.stop()
        assert (await verify(store)).ok
    finally:
        await store.close()



def test_on_postgresql_intents_keep_their_own_transaction(pg_config, tmp_path):
    asyncio.run(_not_carried(_config("postgres", tmp_path, pg_config)))


async def _not_carried(config: AuditConfig) -> None:
    store = await _opened(config)
    try:
        log = IntentLog(store, Redactor(), 7)
        log.add("slow", orjson.dumps(_intent_frame("slow")))
        # its own commit may run beside a records' transaction there: none waits for one
        assert log.carry() is None
        await log.drain()
        assert [orjson.loads(d)["id"] for d in await store.left_by(7)] == ["slow"]
    finally:
        await store.close()
