"""The kill -9 loop shared by the CI test (a few cycles) and ``nox -s soak`` (20 cycles).

``midway serve`` with audit and billing on SQLite runs under streaming load; it is killed with
SIGKILL at a random moment, restarted on the same data dir, and so on. At the end a graceful
phase (SIGTERM, exit 0) closes the run, and the stores are reconciled with what the fake
upstream (in this process, so it sees every header) received.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from hardening_support import MSG, Server, audit_ids, get_json, ledger_rows

from midway.testing import FakeUpstream, Reply, wait_for

HERE = Path(__file__).parent
ATTEMPT_PLUGIN = str(HERE / "hardening_attempt_plugin.py")
CONFIG = """
[midway]
plugins = ["audit", "billing"]
access_log = false
shutdown_timeout = 20

[audit]
sqlite_synchronous = "normal"

[billing]
reconcile_interval = 0
"""


async def _client(url: str, n: int, stop: asyncio.Event, answered: set[str]) -> None:
    async with aiohttp.ClientSession() as session:
        i = 0
        while not stop.is_set():
            i += 1
            body = {**MSG, "stream": i % 4 != 0,
                    "messages": [{"role": "user", "content": f"client {n} request {i}"}]}
            try:
                async with session.post(f"{url}/v1/messages", data=orjson.dumps(body),
                                        headers={"x-api-key": "sk-ant-crash"}) as resp:
                    data = await resp.read()
                    if resp.status == 200 and (b"message_stop" in data or not body["stream"]):
                        answered.add(resp.headers["x-midway-request-id"])
            except (TimeoutError, aiohttp.ClientError, KeyError):
                if stop.is_set():
                    return
                await asyncio.sleep(0.01)


async def _load_then_kill(server: Server, fake: FakeUpstream, clients: int, requests: int,
                          answered: set[str]) -> int:
    """Load until the fake saw ``requests`` more requests, then SIGKILL right after an audit
    status poll. Returns the acknowledged (committed) audit seq at that moment."""
    stop = asyncio.Event()
    start = len(fake.messages_requests)
    tasks = [asyncio.create_task(_client(server.url, n, stop, answered)) for n in range(clients)]
    acked = 0
    async with aiohttp.ClientSession() as session:
        while len(fake.messages_requests) - start < requests:
            await asyncio.sleep(0.005)
        async with session.get(f"{server.url}/_midway/audit/status") as resp:
            acked = (await resp.json())["committed_seq"]
        server.stop(signal.SIGKILL, timeout=10)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return int(acked)


def crash_loop(tmp: Path, cycles: int, clients: int = 16) -> dict[str, Any]:
    """Run ``cycles`` kill -9 cycles and a graceful end; assert the reconciliation; return
    the figures."""
    fake = FakeUpstream()
    fake.start()
    fake.fake.default = lambda rec: Reply(delay=0.01, text_chunks=6)
    server = Server(tmp, CONFIG, fake.url, extra_args=("--plugin", ATTEMPT_PLUGIN))
    answered: set[str] = set()
    acked_seqs = []
    try:
        for _ in range(cycles):
            server.start()
            acked = asyncio.run(_load_then_kill(server, fake, clients, random.randint(30, 90),
                                                answered))
            acked_seqs.append(acked)
            assert server.proc is not None and server.proc.returncode == -signal.SIGKILL
            # The killed relay's audit writer wrote what the relay had handed it, then exited
            # (stop waits for it): every request that reached the upstream is recorded now,
            # answered or interrupted, before a restart could recover anything.
            reached = {r.headers["x-hardening-attempt"].rsplit(".", 1)[0]
                       for r in fake.messages_requests}
            unrecorded = reached - set(audit_ids(server.data_dir))
            assert not unrecorded, f"{len(unrecorded)} requests unrecorded after the kill"
        server.start()  # the graceful end: every answered request is recorded
        final: set[str] = set()
        final_start = len(fake.messages_requests)

        async def finish() -> None:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(_client(server.url, n, stop, final))
                     for n in range(clients)]
            while len(fake.messages_requests) - final_start < 50:
                await asyncio.sleep(0.005)
            stop.set()
            await asyncio.gather(*tasks)
        asyncio.run(finish())
        wait_for(lambda: get_json(server.url + "/healthz")["open_streams"] == 0)
        assert server.stop(signal.SIGTERM) == 0
        return reconcile(server, fake, answered, final, acked_seqs)
    finally:
        server.ensure_stopped()
        fake.stop()


def reconcile(server: Server, fake: FakeUpstream, answered: set[str], final: set[str],
              acked_seqs: list[int]) -> dict[str, Any]:
    served = fake.messages_requests
    attempt_ids = [r.headers["x-hardening-attempt"] for r in served]
    assert len(attempt_ids) == len(set(attempt_ids))
    complete = {r.headers["x-hardening-attempt"] for r in served
                if r.finished_at is not None and not r.cancelled}
    rows = {r["id"]: r for r in ledger_rows(server.data_dir)}
    states = Counter(r["state"] for r in rows.values())
    # Billing: every attempt the upstream received has exactly one row (the id is the primary
    # key: never two); nothing is left pending; a row for an attempt the upstream never saw
    # was written ahead and reconciled at the next start-up, never settled with a cost.
    missing = set(attempt_ids) - set(rows)
    assert not missing, f"{len(missing)} attempts served without a ledger row"
    assert states["pending"] == 0, states
    for row_id in set(rows) - set(attempt_ids):
        assert rows[row_id]["state"] == "reconciled" and rows[row_id]["cost_pusd"] == 0
    # Audit: the chain verifies, no request twice, every acknowledged record survived, and
    # exactly as for the ledger: every request the upstream received has its record (the
    # write-ahead intents of a killed process become records, marked interrupted, written by
    # its audit writer as it exits); a record the upstream never saw is such an interrupted
    # one, for a request killed between its intent and its first attempt.
    verified = orjson.loads(server.cli("audit", "verify", "--json").stdout)
    assert verified["ok"], verified
    records = audit_ids(server.data_dir)
    assert set(records.values()) == {1}
    exchanges = {a.rsplit(".", 1)[0] for a in attempt_ids}
    missing_records = exchanges - set(records)
    assert not missing_records, f"{len(missing_records)} requests served without a record"
    interrupted = interrupted_ids(server.data_dir)
    assert set(records) - exchanges <= interrupted
    assert verified["head_seq"] == sum(records.values()) >= max(acked_seqs, default=0)
    assert final <= set(records)
    lost = answered - set(records)
    assert not lost, f"{len(lost)} answered requests without a record"
    return {"cycles": len(acked_seqs), "requests_served": len(served),
            "attempts_complete": len(complete), "ledger_rows": len(rows),
            "ledger_states": dict(states), "audit_records": len(records),
            "requests_reaching_upstream": len(exchanges),
            "audit_interrupted_records": len(interrupted),
            "audit_records_never_sent_upstream": len(set(records) - exchanges),
            "answered_before_kills": len(answered),
            "answered_but_unrecorded_at_kill": len(lost), "final_phase_requests": len(final)}


def interrupted_ids(data_dir: Path) -> set[str]:
    """Audit records written at start-up for requests a killed process had in flight."""
    with sqlite3.connect(data_dir / "audit.db") as con:
        return {r[0] for r in con.execute("SELECT request_id, data FROM audit_records")
                if orjson.loads(r[1]).get("interrupted")}
