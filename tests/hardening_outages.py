"""Two fault loops of ``nox -s soak`` (issue 18): kill -9 of the audit writer process only,
and a PostgreSQL crash under load behind three instances. Each returns its figures — requests
served, records, ledger rows, duplicates, losses, recovery time — and the soak checks that
duplicates and losses are 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import cluster
import orjson
from hardening_crash import ATTEMPT_PLUGIN, CONFIG, _client, interrupted_ids
from hardening_support import Server, audit_ids, get_json, ledger_rows

from midway.identity import passthrough_id
from midway.testing import FakeUpstream, Reply, wait_for
from midway.testing_services import PrivatePostgres, pg_query


def writer_kills(tmp: Path, kills: int, clients: int = 16) -> dict[str, Any]:
    """``midway serve`` (audit and billing on SQLite) under streaming load; its audit writer
    process is killed ``kills`` times (the relay restarts it); then a graceful stop. Every
    request the upstream served must have exactly one record and one ledger row."""
    fake = FakeUpstream()
    fake.start()
    fake.fake.default = lambda rec: Reply(delay=0.02, text_chunks=8)  # in flight at a kill
    server = Server(tmp, CONFIG, fake.url, extra_args=("--plugin", ATTEMPT_PLUGIN))
    answered: set[str] = set()
    recovery: list[float] = []

    async def run() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_client(server.url, n, stop, answered))
                 for n in range(clients)]
        async with aiohttp.ClientSession() as session:

            async def status() -> dict[str, Any]:
                async with session.get(f"{server.url}/_midway/audit/status") as resp:
                    return dict(await resp.json())

            for _ in range(kills):
                start = len(fake.messages_requests)
                while len(fake.messages_requests) - start < 60:
                    await asyncio.sleep(0.005)
                before = await status()
                os.kill(before["writer_pid"], signal.SIGKILL)
                killed = time.monotonic()
                # recovered: a new writer runs and commits again
                while True:
                    now = await status()
                    if now.get("writer_pid") not in (None, before["writer_pid"]) and \
                            now.get("committed_seq", 0) > before["committed_seq"]:
                        break
                    await asyncio.sleep(0.01)
                recovery.append(time.monotonic() - killed)
        stop.set()
        await asyncio.gather(*tasks)

    try:
        server.start()
        asyncio.run(run())
        wait_for(lambda: get_json(server.url + "/healthz")["open_streams"] == 0)
        restarts = get_json(server.url + "/_midway/audit/status")["writer_restarts"]
        code = server.stop(signal.SIGTERM)
    finally:
        server.ensure_stopped()
        fake.stop()
    attempts = [r.headers["x-hardening-attempt"] for r in fake.messages_requests]
    exchanges = {a.rsplit(".", 1)[0] for a in attempts}
    records = audit_ids(server.data_dir)
    rows = {r["id"]: r for r in ledger_rows(server.data_dir)}
    interrupted = interrupted_ids(server.data_dir)
    verified = orjson.loads(server.cli("audit", "verify", "--json").stdout)
    found = {
        "kills": kills, "writer_restarts": restarts, "exit_code": code,
        "requests_served": len(exchanges), "answered": len(answered),
        "audit_records": len(records),
        "audit_duplicates": sum(n - 1 for n in records.values() if n > 1),
        "audit_losses": len((exchanges | answered) - set(records)),
        # records the killed writer had taken from the ring but not committed: their
        # requests are recorded from their intents, as interrupted, when the relay stops
        "audit_interrupted": len(interrupted),
        "ledger_rows": len(rows),
        "ledger_losses": len(set(attempts) - set(rows)),
        "ledger_pending": sum(1 for r in rows.values() if r["state"] == "pending"),
        "recovery_seconds_max": round(max(recovery, default=0.0), 2),
        "recovery_seconds_mean": round(sum(recovery) / max(len(recovery), 1), 2),
        "chain_verified": bool(verified["ok"]),
    }
    found["checks"] = {
        "restarted_each_time": restarts == kills, "graceful_exit": code == 0,
        "no_duplicates": found["audit_duplicates"] == 0,
        "no_audit_loss": found["audit_losses"] == 0,
        "no_ledger_loss": found["ledger_losses"] == 0 and found["ledger_pending"] == 0,
        "chain_verified": found["chain_verified"]}
    return found


PG_KEY = "sk-ant-soak-pg-restart-0001"
PG_IDENTITY = "soak-identity-secret-0123456789abcdef"
PG_GRACE = 10.0  # midway.storage.liveness: free locks are trusted once the server is up this long


def postgres_restart(tmp: Path, before: float = 3.0, clients: int = 12) -> dict[str, Any]:
    """Three instances sharing audit and billing on a private PostgreSQL under load; the
    server crashes (``pg_ctl stop -m immediate``) and comes back; load goes on past the
    liveness grace period. Every answer must have one audit record and one settled ledger
    row; recovery is the time from the restart until every instance answers again."""
    pg = PrivatePostgres()
    fake = FakeUpstream()
    fake.start()
    instances: list[cluster.Instance] = []
    try:
        pg.start()
        pg_query(pg.dsn, "ALTER SYSTEM SET synchronous_commit = on")  # see the test's note
        pg_query(pg.dsn, "SELECT pg_reload_conf()")
        config = tmp / "midway.toml"
        principal = passthrough_id(PG_KEY, PG_IDENTITY.encode())
        config.write_text(f"""
[midway]
identity_secret = "{PG_IDENTITY}"
access_log = false

[audit]
store = "{pg.dsn}"
schema = "audit"

[billing]
store = "{pg.dsn}"
schema = "billing"
reconcile_interval = 0.5

[[billing.budgets]]
name = "roomy"
scope = "principal"
match = "{principal}"
period = "total"
limit_usd = "100000"
""")
        assert cluster.midway_cli(config, "audit,billing", "db", "upgrade").returncode == 0
        instances = cluster.start_instances(config, fake.url, tmp, "audit,billing")
        outcomes: list[tuple[int, int, str | None, float]] = []  # instance, status, id, at
        restarted: list[float] = []

        async def load() -> None:
            stop = asyncio.Event()

            async def client(n: int) -> None:
                instance = n % len(instances)
                url = instances[instance].url
                async with aiohttp.ClientSession() as session:
                    i = 0
                    while not stop.is_set():
                        i += 1
                        body = {"model": "claude-sonnet-4-6", "max_tokens": 20,
                                "stream": i % 2 == 0,
                                "messages": [{"role": "user", "content": f"c{n} {i}"}]}
                        try:
                            async with session.post(f"{url}/v1/messages", json=body,
                                                    headers={"x-api-key": PG_KEY}) as resp:
                                await resp.read()
                                outcomes.append((instance, resp.status,
                                                 resp.headers.get("x-midway-request-id"),
                                                 time.monotonic()))
                        except aiohttp.ClientError:
                            outcomes.append((instance, 0, None, time.monotonic()))
                            await asyncio.sleep(0.05)

            tasks = [asyncio.create_task(client(n)) for n in range(clients)]
            loop = asyncio.get_running_loop()
            await asyncio.sleep(before)  # load before the crash (a stretch, not a sync)
            pg.stop("immediate")
            await loop.run_in_executor(None, pg.start)
            restarted.append(time.monotonic())
            await asyncio.sleep(PG_GRACE + 3)  # past the grace period, under load
            stop.set()
            await asyncio.gather(*tasks)

        asyncio.run(load())

        def settled() -> bool:
            pending = pg_query(pg.dsn, "SELECT count(*) FROM billing_ledger WHERE "
                               "state = 'pending'", schema="billing")[0][0]
            held = pg_query(pg.dsn, "SELECT count(*) FROM billing_reservations",
                            schema="billing")[0][0]
            return bool(pending == 0 and held == 0)

        wait_for(settled, timeout=60, interval=0.2)
        codes = cluster.stop_instances(instances)
        ok = {rid for _, status, rid, _ in outcomes if status == 200 and rid}
        wait_for(lambda: ok <= {r[0] for r in pg_query(
            pg.dsn, "SELECT request_id FROM audit_records", schema="audit")}, timeout=30,
            interval=0.2)
        records = pg_query(pg.dsn, "SELECT request_id, data FROM audit_records",
                           schema="audit")
        by_id = Counter(r["request_id"] for r in records)
        interrupted = {r["request_id"] for r in records
                       if orjson.loads(r["data"]).get("interrupted")}
        ledger = pg_query(pg.dsn, "SELECT exchange_id, kind, state, status FROM billing_ledger",
                          schema="billing")
        settled_ok = {r["exchange_id"] for r in ledger
                      if r["kind"] == "attempt" and r["status"] == 200 and r["state"] == "settled"}
        counters = pg_query(pg.dsn, "SELECT spent_pusd, reserved_pusd FROM billing_counters",
                            schema="billing")
        spent = pg_query(pg.dsn, "SELECT COALESCE(SUM(cost_pusd), 0) FROM billing_ledger "
                         "WHERE kind = 'attempt'", schema="billing")[0][0]
        verify = cluster.midway_cli(config, "audit,billing", "audit", "verify")
        back = restarted[0]
        recovery = [min((at for i, status, _, at in outcomes if i == n and status == 200
                         and at > back), default=float("inf")) - back
                    for n in range(len(instances))]
        found = {
            "instances": len(instances), "exit_codes": codes,
            "requests_sent": len(outcomes), "requests_served": len(fake.messages_requests),
            "answered_200": len(ok),
            "failed_during_outage": sum(1 for _, s, _, _ in outcomes if s != 200),
            "audit_records": len(records),
            "audit_duplicates": sum(n - 1 for n in by_id.values() if n > 1),
            "audit_losses": len(ok - set(by_id)),
            "answers_recorded_as_interrupted": len(ok & interrupted),
            "ledger_rows": len(ledger),
            "ledger_losses": len(ok - settled_ok),
            "ledger_not_settled": sum(1 for r in ledger if r["state"] != "settled"),
            "counters_equal_ledger": all(c["spent_pusd"] == spent and c["reserved_pusd"] == 0
                                         for c in counters),
            "recovery_seconds": round(max(recovery), 2),
            "chain_verified": verify.returncode == 0,
        }
        found["checks"] = {
            "graceful_exit": codes == [0, 0, 0],
            "no_duplicates": found["audit_duplicates"] == 0,
            "no_audit_loss": found["audit_losses"] == 0 and
            found["answers_recorded_as_interrupted"] == 0,
            "no_ledger_loss": found["ledger_losses"] == 0 and found["ledger_not_settled"] == 0,
            "counters_equal_ledger": found["counters_equal_ledger"],
            "chain_verified": found["chain_verified"]}
        return found
    finally:
        if instances:
            for instance in instances:
                if instance.proc.poll() is None:
                    instance.proc.kill()
                    instance.proc.wait(10)
        fake.stop()
        pg.remove()
