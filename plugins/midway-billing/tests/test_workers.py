"""Budgets hold across processes: `midway serve --workers 2` sharing one SQLite file."""

from __future__ import annotations

import asyncio
import math
import signal
import sqlite3
from pathlib import Path

import aiohttp
import orjson
from test_crash import get_json, start, up

from midway.testing import free_port, wait_for

MAX_TOKENS = 6600
BODY = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": MAX_TOKENS,
                     "messages": [{"role": "user", "content": "count me"}]})
INPUT = math.ceil(len(BODY) / 3)  # billing's input estimate: body bytes / 3
PER_REQUEST = INPUT * 3 + MAX_TOKENS * 15  # micro-dollars, Sonnet rates
# The upstream reports usage equal to the estimate: settling never frees room.
FAKE_REPLY = orjson.dumps({"usage": {"input_tokens": INPUT, "output_tokens": MAX_TOKENS},
                           "delay": 0.02}).decode()


async def fire(url: str, n: int) -> list[int]:
    headers = {"x-api-key": "sk-ant-test", "content-type": "application/json",
               "anthropic-version": "2023-06-01", "x-fake-reply": FAKE_REPLY}
    # A connection per request, so the kernel spreads them over both workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:

        async def one() -> int:
            async with s.post(f"{url}/v1/messages", data=BODY, headers=headers) as response:
                await response.read()
                return response.status

        return list(await asyncio.gather(*[one() for _ in range(n)]))


def test_two_worker_processes_admit_exactly_ten(tmp_path: Path) -> None:
    fake_port, port = free_port(), free_port()
    limit = PER_REQUEST * 10 + PER_REQUEST // 2
    config = tmp_path / "midway.toml"
    config.write_text(f"""
[midway]
plugins = ["billing"]
access_log = false

[billing]
reserve_output_tokens = {MAX_TOKENS}

[[billing.budgets]]
scope = "all"
period = "day"
limit_usd = "{limit / 10**6}"
""")
    data = tmp_path / "data"
    fake = start(["mock-upstream", "--port", str(fake_port)], tmp_path / "fake.log")
    midway = start(["serve", "--port", str(port), "--workers", "2", "--config", str(config),
                    "--upstream", f"http://127.0.0.1:{fake_port}", "--data-dir", str(data)],
                   tmp_path / "midway.log")
    try:
        wait_for(lambda: up(f"http://127.0.0.1:{fake_port}/v1/models"), timeout=30)
        seen: set[int] = set()

        def both_workers() -> bool:  # each new connection may land on either process
            if up(f"http://127.0.0.1:{port}/healthz"):
                seen.add(get_json(f"http://127.0.0.1:{port}/healthz")["worker"])
            return len(seen) == 2

        wait_for(both_workers, timeout=30)
        statuses = asyncio.run(fire(f"http://127.0.0.1:{port}", 50))
        assert statuses.count(200) == 10 and statuses.count(429) == 40, statuses
        midway.send_signal(signal.SIGTERM)  # graceful: both workers settle and stop
        assert midway.wait(30) == 0
        with sqlite3.connect(data / "billing.db") as con:
            spent = con.execute("SELECT SUM(cost_pusd) FROM billing_ledger").fetchone()[0]
            instances = con.execute("SELECT COUNT(DISTINCT instance) FROM billing_ledger"
                                    ).fetchone()[0]
            reserved = con.execute("SELECT SUM(reserved_pusd) FROM billing_counters"
                                   ).fetchone()[0]
        assert instances == 2  # both processes admitted or refused some
        assert spent == PER_REQUEST * 10 * 10**6 and reserved == 0
    finally:
        for proc in (midway, fake):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
