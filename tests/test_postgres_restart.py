"""PostgreSQL restarts under load, behind three ``midway serve`` instances sharing audit and
billing stores on a server of this test's own (never the machine's shared one).

A restart drops every session, and with them the advisory locks by which instances tell each
other they are alive. Checked: the instances take their locks again, so no peer mistakes a live
instance for a dead one — no request audited twice, no live ledger row reconciled at its
estimate, no reservation leaked, no budget refusal — and answers that finished while the
database was away are settled, with their real usage, once it is back.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import asyncpg
import cluster
import orjson
import pytest

from midway.identity import passthrough_id
from midway.testing import PrivatePostgres, pg_query, wait_for

PLUGINS = "audit,billing"
MODEL = "claude-sonnet-4-6"  # $3 / $15 per million input / output tokens
USAGE = {"input_tokens": 11, "output_tokens": 7}
COST_PUSD = (11 * 3 + 7 * 15) * 10**6  # picodollars of one served request
KEY = "sk-ant-restart-0001"
PLAIN = orjson.dumps({"usage": USAGE}).decode()  # the fake upstream's answer, scripted
HELD = orjson.dumps({"first_byte_delay": 2.0, "usage": USAGE}).decode()
IDENTITY_SECRET = "restart-identity-secret-0123456789abcdef"  # one principal on every instance
GRACE = 10.0  # midway.storage.liveness: a free lock is trusted once the server is up this long
pytestmark = pytest.mark.timeout(300)


def write_config(path: Path, dsn: str) -> None:
    principal = passthrough_id(KEY, IDENTITY_SECRET.encode())
    path.write_text(f"""
[midway]
identity_secret = "{IDENTITY_SECRET}"

[audit]
store = "{dsn}"
schema = "audit"

[billing]
store = "{dsn}"
schema = "billing"
reconcile_interval = 0.5

[[billing.budgets]]
name = "roomy"
scope = "principal"
match = "{principal}"
period = "total"
limit_usd = "1000"
mode = "hard"
""")


class Load:
    """Requests spread over the instances until stopped; every outcome is kept."""

    def __init__(self, instances: list[cluster.Instance]) -> None:
        self.clients = [anthropic.AsyncAnthropic(base_url=i.url, api_key=KEY, max_retries=0,
                                                 timeout=60) for i in instances]
        self.outcomes: list[tuple[int, str | None, str]] = []  # status, request id, error
        self.running = True

    async def ask(self, n: int, held: bool = False) -> None:
        client = self.clients[n % len(self.clients)]
        headers = {"x-fake-reply": HELD if held else PLAIN}
        try:
            raw = await client.messages.with_raw_response.create(
                model=MODEL, max_tokens=20, stream=n % 2 == 0, extra_headers=headers,
                messages=[{"role": "user", "content": f"question {n}"}])
            parsed = await raw.parse()
            if n % 2 == 0:
                async for _ in parsed:
                    pass
            self.outcomes.append((raw.status_code, raw.headers["x-midway-request-id"], ""))
        except anthropic.APIStatusError as exc:
            self.outcomes.append((exc.status_code, exc.response.headers.get(
                "x-midway-request-id"), exc.response.text))
        except anthropic.APIConnectionError as exc:
            self.outcomes.append((0, None, repr(exc)))

    async def steady(self, first: int) -> None:
        n = first
        while self.running:
            await asyncio.gather(*(self.ask(n + i) for i in range(6)))
            n += 6

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


async def _exercise(instances: list[cluster.Instance], pg: PrivatePostgres,
                    fake_upstream: Any) -> Load:
    load = Load(instances)
    steady = asyncio.create_task(load.steady(1000))
    try:
        await asyncio.gather(*(load.ask(i) for i in range(12)))  # warm: all three serve
        # Requests held at the upstream over the outage: they finish while it is down, and
        # must settle once it is back.
        held = [asyncio.create_task(load.ask(100 + i, held=True)) for i in range(6)]
        await _until(lambda: sum(1 for r in fake_upstream.messages_requests
                                 if r.headers.get("x-fake-reply") == HELD) == 6)
        pg.stop("immediate")  # as a crash: every session and advisory lock gone at once
        await asyncio.gather(*held)  # answered while the database is away
        await asyncio.get_running_loop().run_in_executor(None, pg.start)
        # Past the grace period, peers trust free locks again: by then every live instance
        # must hold its own, or reconciliation and recovery would take its work.
        await asyncio.sleep(GRACE + 3)  # a stretch of time under load, not a synchronisation
    finally:
        load.running = False
        await steady
        await load.close()
    return load


async def _until(condition: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _settled(dsn: str) -> bool:
    try:
        pending = pg_query(dsn, "SELECT count(*) FROM billing_ledger WHERE state = 'pending'",
                           schema="billing")[0][0]
        reserved = pg_query(dsn, "SELECT count(*) FROM billing_reservations",
                            schema="billing")[0][0]
    except (OSError, asyncpg.PostgresError):
        return False
    return pending == 0 and reserved == 0


def _leftovers(dsn: str) -> list[dict[str, Any]]:
    rows = pg_query(dsn, "SELECT * FROM billing_ledger WHERE state = 'pending'", schema="billing")
    held = pg_query(dsn, "SELECT * FROM billing_reservations", schema="billing")
    same = pg_query(dsn, "SELECT * FROM billing_ledger WHERE exchange_id = ANY($1::text[])",
                    [r["exchange_id"] for r in [*rows, *held]], schema="billing")
    return [dict(r) for r in [*rows, *held, *same]]


def test_postgres_restart_under_load(fake_upstream, private_postgres, tmp_path):
    pg = private_postgres
    # The private server trades durability for speed (synchronous_commit = off): a crash
    # would then lose commits midway was told had landed — settlements, audit records —
    # which no client can make up for. The guarantee is for PostgreSQL's default.
    pg_query(pg.dsn, "ALTER SYSTEM SET synchronous_commit = on")
    pg_query(pg.dsn, "SELECT pg_reload_conf()")
    assert pg_query(pg.dsn, "SHOW synchronous_commit")[0][0] == "on"
    config = tmp_path / "midway.toml"
    write_config(config, pg.dsn)
    assert cluster.midway_cli(config, PLUGINS, "db", "upgrade").returncode == 0
    instances = cluster.start_instances(config, fake_upstream.url, tmp_path, PLUGINS)
    late: list[cluster.Instance] = []
    try:
        load = asyncio.run(_exercise(instances, pg, fake_upstream))
        # A fourth instance starts after the restart: its audit writer recovers the intents
        # of instances it finds dead — and must find none of the three live ones.
        late = cluster.start_instances(config, fake_upstream.url, tmp_path, PLUGINS,
                                       workers=(1,), first=3)
        try:
            wait_for(lambda: _settled(pg.dsn), timeout=60, interval=0.2)
        except AssertionError:
            raise AssertionError(f"left pending or held: {_leftovers(pg.dsn)}") from None
    finally:
        codes = cluster.stop_instances(instances + late)
    assert codes == [0, 0, 0, 0][:len(codes)]

    ok = [rid for status, rid, _ in load.outcomes if status == 200]
    refused = [(s, e) for s, _, e in load.outcomes if s == 429]
    assert not refused, refused[:3]  # no budget refusal: $1000 left throughout
    assert len(ok) >= 30, load.outcomes[-5:]
    held_ok = [rid for status, rid, _ in load.outcomes[12:] if status == 200]
    assert held_ok, "the held requests were answered"

    # Billing: one settled row per answer, at its real cost; nothing reconciled, nothing held.
    ledger = pg_query(pg.dsn, "SELECT exchange_id, kind, state, status, cost_pusd "
                      "FROM billing_ledger", schema="billing")
    attempts = [r for r in ledger if r["kind"] == "attempt"]
    assert {r["state"] for r in ledger} == {"settled"}, \
        [dict(r) for r in ledger if r["state"] != "settled"][:3]
    by_request = {r["exchange_id"]: r for r in attempts if r["status"] == 200}
    assert set(ok) <= set(by_request)
    assert {by_request[rid]["cost_pusd"] for rid in ok} == {COST_PUSD}
    # every answer the upstream gave is a 200 row; requests the outage failed before they were
    # sent (the write-ahead could not be written) cost nothing
    assert len(by_request) == len(fake_upstream.messages_requests)
    assert all(r["cost_pusd"] == 0 for r in attempts if r["status"] != 200)
    counters = pg_query(pg.dsn, "SELECT key, spent_pusd, reserved_pusd FROM billing_counters",
                        schema="billing")
    assert counters and all(r["reserved_pusd"] == 0 for r in counters)
    spent = sum(r["cost_pusd"] for r in attempts)
    assert {r["spent_pusd"] for r in counters} == {spent}
    assert Decimal(spent) / 10**12 < 1000

    # Audit: every answered request recorded once, none as interrupted; the chain verifies.
    def records() -> list[Any]:
        return pg_query(pg.dsn, "SELECT request_id, status, data FROM audit_records",
                        schema="audit")

    # a relay's audit writer is a process of its own: it may still be committing its last
    # batch when the relay has exited
    wait_for(lambda: set(ok) <= {r["request_id"] for r in records()}, timeout=30,
             interval=0.2)
    stored = records()
    ids = [r["request_id"] for r in stored]
    assert len(ids) == len(set(ids)), "a request was recorded twice"
    assert set(ok) <= set(ids)
    interrupted = [r["request_id"] for r in stored if orjson.loads(r["data"]).get("interrupted")]
    assert not set(interrupted) & set(ok)
    verify = cluster.midway_cli(config, PLUGINS, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
