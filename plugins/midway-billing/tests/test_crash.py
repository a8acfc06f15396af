"""kill -9 under load, then restart: every attempt the upstream served has exactly one row."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest

from midway.testing import free_port, pg_query, wait_for

HERE = Path(__file__).parent


def up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status < 500)
    except (urllib.error.URLError, OSError):
        return False


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return orjson.loads(response.read())


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "midway.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT)


async def load(url: str, stop: asyncio.Event, started: list[int]) -> None:
    client = anthropic.AsyncAnthropic(base_url=url, api_key="sk-ant-test", max_retries=0,
                                      default_headers={"x-fake-reply": '{"delay": 0.05}'})

    async def worker() -> None:
        while not stop.is_set():
            started.append(1)
            try:
                async with client.messages.stream(
                        model="claude-sonnet-4-6", max_tokens=100,
                        messages=[{"role": "user", "content": "hello"}]) as s:
                    await s.get_final_message()
            except Exception:  # midway was killed (the SDK's transport errors vary)
                return

    await asyncio.gather(*[worker() for _ in range(16)])
    await client.close()


def query(store: dict[str, str], sql: str) -> list[tuple[Any, ...]]:
    if "schema" not in store:
        with sqlite3.connect(store["path"]) as con:
            return con.execute(sql).fetchall()
    return [tuple(r) for r in pg_query(store["dsn"], sql, schema=store["schema"])]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_under_load_then_restart(tmp_path: Path, backend: str, request) -> None:
    fake_port, port = free_port(), free_port()
    data = tmp_path / "data"
    if backend == "sqlite":
        store = {"path": str(data / "billing.db")}
        table = ""
    else:
        store = {"dsn": request.getfixturevalue("postgres_dsn"),
                 "schema": request.getfixturevalue("pg_schema")}
        table = f'store = "{store["dsn"]}"\nschema = "{store["schema"]}"'
    config = tmp_path / "midway.toml"
    config.write_text(f"""
[midway]
plugins = ["billing"]
extra_plugins = ["{HERE / 'attempt_header.py'}"]
access_log = false

[billing]
reconcile_interval = 0
{table}

[[billing.budgets]]
scope = "all"
period = "day"
limit_usd = "1000"
""")
    fake = start(["mock-upstream", "--port", str(fake_port)], tmp_path / "fake.log")
    serve_args = ["serve", "--port", str(port), "--upstream", f"http://127.0.0.1:{fake_port}",
                  "--config", str(config), "--data-dir", str(data)]
    procs = [fake]
    try:
        wait_for(lambda: up(f"http://127.0.0.1:{fake_port}/v1/models"), timeout=30)
        midway = start(serve_args, tmp_path / "midway.log")
        procs.append(midway)
        wait_for(lambda: up(f"http://127.0.0.1:{port}/healthz"), timeout=30)

        async def run() -> None:
            stop = asyncio.Event()
            started: list[int] = []
            task = asyncio.create_task(load(f"http://127.0.0.1:{port}", stop, started))
            while len(started) < 60:  # well into the load: many streams in flight
                await asyncio.sleep(0.01)
            # kill while the ledger shows work in flight (the point of the test), not between
            # two rounds of requests
            while not (await asyncio.to_thread(
                    query, store, "SELECT COUNT(*) FROM billing_ledger "
                    "WHERE state = 'pending'"))[0][0]:
                await asyncio.sleep(0.005)
            os.kill(midway.pid, signal.SIGKILL)
            stop.set()
            await asyncio.wait_for(task, 30)

        asyncio.run(run())
        midway.wait(10)
        served = [r for r in get_json(f"http://127.0.0.1:{fake_port}/_fake/requests")
                  if r["path"] == "/v1/messages"]
        assert len(served) >= 20

        [(pending_before,)] = query(store, "SELECT COUNT(*) FROM billing_ledger "
                                           "WHERE state = 'pending'")
        assert pending_before > 0  # the kill left work in flight

        restarted = start(serve_args, tmp_path / "midway.log")
        procs.append(restarted)
        wait_for(lambda: up(f"http://127.0.0.1:{port}/healthz"), timeout=30)
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(30)

        rows = query(store, "SELECT id, state, cost_pusd FROM billing_ledger "
                            "WHERE kind = 'attempt'")
        [(reserved,)] = query(store, "SELECT COALESCE(SUM(reserved_pusd), 0) "
                                     "FROM billing_counters")
        [(holds,)] = query(store, "SELECT COUNT(*) FROM billing_reservations")
        ids = [r[0] for r in rows]
        states = {r[0]: r[1] for r in rows}
        served_ids = [{k.lower(): v for k, v in r["headers"].items()}["x-test-attempt"]
                      for r in served]
        assert len(served_ids) == len(set(served_ids))
        missing = set(served_ids) - set(ids)
        assert not missing, f"{len(missing)} served attempts have no ledger row"
        assert len(ids) == len(set(ids))
        assert "pending" not in states.values()
        assert sum(s == "reconciled" for s in states.values()) >= pending_before
        # Rows written ahead for attempts the upstream never saw are reconciled, not settled.
        for row_id in set(ids) - set(served_ids):
            assert states[row_id] == "reconciled"
        assert reserved == 0 and holds == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
