"""Clients that leave: during the upload, before the first byte, mid-stream. The upstream
request is cancelled within a second (as the fake upstream saw it), every request is recorded
once, and file descriptors, asyncio tasks and open streams return to their baseline."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hardening_support import MSG, audit_ids, ledger_rows, open_fds

from midway.testing import FakeUpstream, RecordedRequest, Reply, RunningMidway, wait_for

ROUNDS = 8
CONFIG: dict[str, Any] = {"midway": {"plugins": ["audit", "billing"]},
                          "audit": {"sqlite_synchronous": "normal"}, "billing": {}}


async def _tasks() -> int:
    return len(asyncio.all_tasks())


class Probe:
    """Resource figures of the test process and of midway's event loop."""

    def __init__(self, running: RunningMidway) -> None:
        self.running = running

    def figures(self) -> dict[str, int]:
        proxy = self.running.proxy
        metrics = self.running.midway.metrics
        return {"fds": open_fds(), "tasks": self.running.call(_tasks()),
                "open_streams": proxy.open_streams, "finishing": len(proxy.finishing),
                "inflight": metrics.inflight if metrics is not None else 0}

    def back_to(self, baseline: dict[str, int]) -> None:
        def ok() -> bool:
            now = self.figures()
            return all(now[k] <= baseline[k] for k in baseline)
        try:
            wait_for(ok, timeout=10)
        except AssertionError:
            raise AssertionError(f"resources {self.figures()} vs baseline {baseline}") from None


def complete_request(url: str, stream: bool) -> None:
    async def go() -> None:
        async with aiohttp.ClientSession() as s, s.post(
                url + "/v1/messages", data=orjson.dumps({**MSG, "stream": stream}),
                headers={"x-api-key": "sk-ant-client"}) as r:
            await r.read()
    asyncio.run(go())


def leave_mid_stream(url: str) -> float:
    async def go() -> float:
        async with aiohttp.ClientSession() as s:
            resp = await s.post(url + "/v1/messages", data=orjson.dumps(
                {**MSG, "stream": True}), headers={"x-api-key": "sk-ant-client"})
            await resp.content.readuntil(b"content_block_delta")
            left = time.monotonic()
            resp.close()  # drop the connection mid-stream
            return left
    return asyncio.run(go())


def leave_before_first_byte(url: str, fake: FakeUpstream, seen: int) -> float:
    body = orjson.dumps({**MSG, "stream": True})
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"x-api-key: sk-ant-client\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for(lambda: len(fake.messages_requests) > seen)  # the upstream is working on it
        left = time.monotonic()
    return left


def leave_during_upload(url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"x-api-key: sk-ant-client\r\n"
                     b"Content-Length: 10000000\r\n\r\n" + b'{"model": "' + b"x" * 200_000)


def finished(rec: RecordedRequest) -> float:
    """When the fake upstream's handler for ``rec`` ended (waiting for it)."""
    wait_for(lambda: rec.finished_at is not None, timeout=5)
    assert rec.finished_at is not None
    return rec.finished_at


@pytest.fixture
def audited(fake_upstream: FakeUpstream, midway_factory: Callable[..., RunningMidway]
            ) -> tuple[RunningMidway, Probe, dict[str, int]]:
    running = midway_factory(config=CONFIG)
    probe = Probe(running)
    for stream in (False, True):  # warm up: connection pool, stores, lazy imports
        complete_request(running.url, stream)
    wait_for(lambda: running.proxy.finishing == set())
    return running, probe, probe.figures()


def records_once(running: RunningMidway, expected: int) -> Any:
    data_dir = Path(running.midway.settings.data_dir)
    wait_for(lambda: sum(audit_ids(data_dir).values()) >= expected, timeout=15)
    ids = audit_ids(data_dir)
    assert sum(ids.values()) == expected and set(ids.values()) == {1}
    return ids


def test_leaving_mid_stream_cancels_upstream_within_a_second(
        audited: tuple[RunningMidway, Probe, dict[str, int]], fake_upstream: FakeUpstream
) -> None:
    running, probe, baseline = audited
    latencies = []
    for i in range(ROUNDS):
        fake_upstream.reply(Reply(delay=0.2, text_chunks=40))
        left = leave_mid_stream(running.url)
        rec = fake_upstream.messages_requests[2 + i]
        latencies.append(finished(rec) - left)
        assert rec.cancelled
    assert max(latencies) < 1.0, latencies
    probe.back_to(baseline)
    records_once(running, 2 + ROUNDS)
    data_dir = Path(running.midway.settings.data_dir)
    # a settlement is not waited for by its request (docs/billing.md): it lands a moment later
    wait_for(lambda: all(r["state"] != "pending" for r in ledger_rows(data_dir)), timeout=15)
    assert len(ledger_rows(data_dir)) == 2 + ROUNDS


def test_leaving_before_the_first_byte_cancels_upstream_within_a_second(
        audited: tuple[RunningMidway, Probe, dict[str, int]], fake_upstream: FakeUpstream
) -> None:
    running, probe, baseline = audited
    latencies = []
    for i in range(ROUNDS):
        fake_upstream.reply(Reply(first_byte_delay=10))
        left = leave_before_first_byte(running.url, fake_upstream, 2 + i)
        rec = fake_upstream.messages_requests[2 + i]
        latencies.append(finished(rec) - left)
        assert rec.cancelled
    assert max(latencies) < 1.0, latencies
    probe.back_to(baseline)
    ids = records_once(running, 2 + ROUNDS)
    record = running.call(running.midway.services["audit"].get(list(ids)[-1]))
    assert record is not None and record["status"] == 499


def test_leaving_during_the_upload_never_reaches_upstream(
        audited: tuple[RunningMidway, Probe, dict[str, int]], fake_upstream: FakeUpstream
) -> None:
    running, probe, baseline = audited
    for _ in range(ROUNDS):
        leave_during_upload(running.url)
    probe.back_to(baseline)
    assert len(fake_upstream.messages_requests) == 2  # the warm-up only
    # The abandoned uploads are requests too: recorded once each, as client disconnects.
    ids = records_once(running, 2 + ROUNDS)
    statuses = [running.call(running.midway.services["audit"].get(i))["status"]
                for i in list(ids)[2:]]
    assert statuses == [499] * ROUNDS
