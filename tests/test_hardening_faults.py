"""Upstream faults with billing and audit on: each ends as documented, and each attempt is
recorded exactly once (audit: one record per request; billing: one ledger row per attempt)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hardening_support import MSG, audit_ids, ledger_rows

from midway.sse import encode_event
from midway.testing import FakeUpstream, Reply, RunningMidway, free_port, wait_for

STREAM = {**MSG, "stream": True}
CONFIG: dict[str, Any] = {"midway": {"plugins": ["audit", "billing"]},
                          "audit": {"sqlite_synchronous": "normal"}, "billing": {}}

MALFORMED = [
    encode_event("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [],
        "model": "claude-sonnet-4-6", "usage": {"input_tokens": 11, "output_tokens": 1}}}),
    b"event: content_block_delta\ndata: {not json at all\n\n",
    b"data: \xff\xfe broken utf-8\n\n",
    b": a comment line\n\nevent: \n\n",
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":"x"}}\n\n',
    b"event: message_delta\ndata: [1, 2, 3]\n\n",
    b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\n",
    b"event: message_stop\ndata: {\"type\":\"message_stop\"}",  # no blank line at the end
]


def send(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    async def go() -> tuple[int, dict[str, str], bytes]:
        async with aiohttp.ClientSession() as s, s.post(
                url + "/v1/messages", data=orjson.dumps(body),
                headers={"x-api-key": "sk-ant-client"}) as r:
            data = await r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}, data
    return asyncio.run(go())


def settled(running: RunningMidway, request_id: str, attempts: int) -> None:
    """Wait until audit committed the record and billing settled every attempt."""
    data_dir = Path(running.midway.settings.data_dir)

    def done() -> bool:
        rows = [r for r in ledger_rows(data_dir) if r["exchange_id"] == request_id]
        return audit_ids(data_dir)[request_id] >= 1 and len(rows) >= attempts and \
            all(r["state"] != "pending" for r in rows)
    wait_for(done, timeout=15)


def check_records(running: RunningMidway, request_id: str, attempts: int
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    settled(running, request_id, attempts)
    data_dir = Path(running.midway.settings.data_dir)
    assert audit_ids(data_dir)[request_id] == 1
    rows = [r for r in ledger_rows(data_dir) if r["exchange_id"] == request_id]
    assert len(rows) == attempts
    assert sorted(r["attempt"] for r in rows) == list(range(1, attempts + 1))
    assert len({r["id"] for r in rows}) == attempts
    record = running.call(running.midway.services["audit"].get(request_id))
    assert record is not None
    return record, rows


FAULTS: dict[str, tuple[Reply, dict[str, Any], Callable[[int, bytes], None]]] = {}


def fault(name: str, reply: Reply, body: dict[str, Any]
          ) -> Callable[[Callable[[int, bytes], None]], Callable[[int, bytes], None]]:
    def register(check: Callable[[int, bytes], None]) -> Callable[[int, bytes], None]:
        FAULTS[name] = (reply, body, check)
        return check
    return register


@fault("reset-mid-stream", Reply(reset_after=3), STREAM)
def _reset(status: int, body: bytes) -> None:
    assert status == 200
    assert body.count(b"event: message_start") == 1 and b"message_stop" not in body
    assert body.endswith(b"\n\n") and b"event: error" in body
    assert b"upstream connection lost" in body


@fault("stall-past-idle-timeout", Reply(stall=2.5, ping_interval=1.5), STREAM)
def _stall(status: int, body: bytes) -> None:
    assert status == 200
    assert b"event: error" in body and b"timed out" in body and b"message_stop" not in body


@fault("pings-keep-a-long-stream-alive", Reply(stall=1.5, ping_interval=0.2), STREAM)
def _pings(status: int, body: bytes) -> None:
    assert status == 200 and body.rstrip().endswith(b'{"type":"message_stop"}')
    assert b"event: error" not in body


for _status, _kind in ((529, "overloaded_error"), (429, "rate_limit_error"), (500, "api_error")):
    for _body, _label in ((MSG, "json"), (STREAM, "stream")):
        def _status_check(status: int, body: bytes, expected: int = _status,
                          kind: str = _kind) -> None:
            assert status == expected
            assert orjson.loads(body)["error"]["type"] == kind  # the upstream's own body
        fault(f"{_status}-before-first-byte-{_label}",
              Reply(status=_status, headers={"retry-after": "3"} if _status == 429 else {}),
              _body)(_status_check)


@fault("malformed-sse", Reply(events=MALFORMED, stream=True, chunk_size=7), STREAM)
def _malformed(status: int, body: bytes) -> None:
    assert status == 200 and body == b"".join(MALFORMED)  # relayed byte for byte


@fault("truncated-stream", Reply(truncate_after=4), STREAM)
def _truncated_stream(status: int, body: bytes) -> None:
    assert status == 200 and b"message_start" in body and b"message_stop" not in body


@fault("truncated-json", Reply(stream=False, body=b'{"id":"msg_1","type":"message","usa'), MSG)
def _truncated_json(status: int, body: bytes) -> None:
    assert (status, body) == (200, b'{"id":"msg_1","type":"message","usa')


@pytest.mark.parametrize("name", list(FAULTS))
def test_upstream_fault_ends_as_documented_and_is_recorded_once(
        name: str, fake_upstream: FakeUpstream, midway_factory: Callable[..., RunningMidway]
) -> None:
    reply, body, check = FAULTS[name]
    running = midway_factory(config=CONFIG, idle_timeout=1.0)
    fake_upstream.reply(reply)
    status, headers, answer = send(running.url, body)
    check(status, answer)
    request_id = headers["x-midway-request-id"]
    record, rows = check_records(running, request_id, 1)
    assert record["status"] == status
    assert rows[0]["status"] == status
    assert len(fake_upstream.messages_requests) == 1
    if name == "malformed-sse":
        # Usage from the events that parsed: message_start's input, the last good delta.
        assert (rows[0]["input_tokens"], rows[0]["output_tokens"]) == (11, 5)


def test_unreachable_upstream_is_502_and_recorded_once(
        midway_factory: Callable[..., RunningMidway]) -> None:
    port = free_port()
    running = midway_factory(config=CONFIG, upstream=f"http://127.0.0.1:{port}")
    status, headers, body = send(running.url, STREAM)
    assert status == 502 and orjson.loads(body)["error"]["type"] == "api_error"
    assert "x-should-retry" not in headers
    record, rows = check_records(running, headers["x-midway-request-id"], 1)
    assert record["status"] == 502
    assert rows[0]["status"] in (None, 502) and rows[0]["cost_pusd"] == 0


def test_pooled_retry_records_each_attempt_once(
        fake_upstream: FakeUpstream, midway_factory: Callable[..., RunningMidway]) -> None:
    """With the router: a 429 before the first byte rests a key and another key serves; the
    ledger holds both attempts, the audit one record, the upstream saw two requests."""
    config = {**CONFIG, "midway": {"plugins": ["audit", "billing", "router"]},
              "router": {"upstreams": [{"name": "anthropic", "url": fake_upstream.url,
                                        "keys": ["sk-ant-pool-1", "sk-ant-pool-2"]}]}}
    running = midway_factory(config=config)
    fake_upstream.reply(Reply(status=429, headers={"retry-after": "5"}), Reply())
    status, headers, body = send(running.url, STREAM)
    assert status == 200 and b"message_stop" in body
    record, rows = check_records(running, headers["x-midway-request-id"], 2)
    by_attempt = {r["attempt"]: r for r in rows}
    assert by_attempt[1]["status"] == 429 and by_attempt[1]["cost_pusd"] == 0
    assert by_attempt[2]["status"] == 200 and by_attempt[2]["cost_pusd"] > 0
    keys = [r.headers["x-api-key"] for r in fake_upstream.messages_requests]
    assert len(keys) == 2 and set(keys) == {"sk-ant-pool-1", "sk-ant-pool-2"}
    assert record["status"] == 200
