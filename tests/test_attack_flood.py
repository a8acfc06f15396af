"""Attack by volume through a real ``midway serve`` (#17 item 8): requests anyone can send
(wrong keys, each with another key and model) must not grow ``/metrics`` or the audit store
without bound."""

from __future__ import annotations

import http.client
import re
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
from hardening_support import Server, rss_kib

from midway.testing import FakeUpstream, Reply, wait_for

ATTACK = "refused requests grow memory and disk without bound"
FLOOD = 10_000
PER_MINUTE = 60  # [audit] refused_per_minute, by default
KEYED = """
[midway]
plugins = ["audit"]
upstream_api_key = "env:HARDEN_UPSTREAM_KEY"
client_keys = [{ key = "env:HARDEN_CLIENT_KEY", name = "alice" }]
"""


def flood(server: Server, count: int, threads: int = 4) -> list[int]:
    """``count`` POSTs, each with its own wrong key, model and a 4 KB body; their statuses."""
    def worker(indexes: range) -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        statuses = []
        for i in indexes:
            body = orjson.dumps({"model": f"claude-flood-{i}", "max_tokens": 1,
                                 "messages": [{"role": "user", "content": "x" * 4096}]})
            conn.request("POST", "/v1/messages", body=body, headers={
                "x-api-key": f"mw-wrong-{i}", "content-type": "application/json",
                "x-padding": "p" * 1024})
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        conn.close()
        return statuses

    step = count // threads
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(worker, [range(n * step, (n + 1) * step) for n in range(threads)])
    return [status for part in parts for status in part]


def series(metrics: str, family: str) -> list[str]:
    return [line for line in metrics.splitlines() if line.startswith(family + "{")]


def counter(metrics: str, pattern: str) -> float:
    found = re.findall(pattern + r" ([0-9.e+]+)", metrics)
    return sum(float(value) for value in found)


def audit_rows(server: Server) -> int:
    with sqlite3.connect(server.data_dir / "audit.db") as con:
        return int(con.execute("SELECT count(*) FROM audit_records").fetchone()[0])


@pytest.fixture
def keyed(tmp_path: Path, fake_upstream: FakeUpstream) -> Iterator[Server]:
    running = Server(tmp_path, KEYED, fake_upstream.url)
    try:
        yield running.start()
    finally:
        running.ensure_stopped()


@pytest.mark.attack(8, ATTACK)
def test_wrong_key_flood_is_bounded(keyed: Server, fake_upstream: FakeUpstream) -> None:
    before = rss_kib(keyed.pid)
    statuses = flood(keyed, FLOOD)
    assert statuses == [401] * FLOOD
    grown = rss_kib(keyed.pid) - before
    metrics = keyed.metrics()
    requests = series(metrics, "midway_requests_total")
    assert len(requests) == 1 and 'principal="unauthenticated"' in requests[0], requests
    assert 'model="none"' in requests[0]
    dropped_pattern = r'midway_audit_records_dropped_total\{reason="refused_rate_limited"\}'
    # Every refusal is recorded or counted; recorded ones at most PER_MINUTE a minute (the
    # flood may straddle a minute or two).
    wait_for(lambda: audit_rows(keyed) + counter(keyed.metrics(), dropped_pattern) == FLOOD,
             timeout=60)
    rows = audit_rows(keyed)
    assert 0 < rows <= 3 * PER_MINUTE, rows
    with sqlite3.connect(keyed.data_dir / "audit.db") as con:
        stored = con.execute("SELECT max(length(data)), max(coalesce(length(request_body), 0))"
                             " FROM audit_records").fetchone()
    assert stored[0] < 2048 and stored[1] == 0, stored  # compact: no bodies, no headers
    assert fake_upstream.requests == []
    assert grown < 8 * 1024, grown  # KiB; the review measured 15.6 MB for this flood
    print(f"\n{FLOOD} wrong-key requests: RSS grew {grown} KiB, {rows} audit rows")


PASSTHROUGH = """
[midway]
plugins = []
"""


@pytest.mark.attack(8, ATTACK)
def test_credentials_refused_upstream_share_one_series(
        tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    fake_upstream.fake.default = lambda rec: Reply(status=401, error_type="authentication_error",
                                                   error_message="invalid x-api-key")
    server = Server(tmp_path, PASSTHROUGH, fake_upstream.url)
    try:
        server.start()
        assert flood(server, 400) == [401] * 400
        requests = series(server.metrics(), "midway_requests_total")
        assert len(requests) == 1 and 'principal="unauthenticated"' in requests[0], requests
    finally:
        server.ensure_stopped()
