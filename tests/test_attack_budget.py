"""Attack on a hard budget through a real midway with billing (#17 item 4): many small
concurrent requests whose real answers are far larger than their reservations. A hard
budget's streams are cut with ``event: error`` once their running cost passes what the budget
can still hold, so the spend overshoots the limit by about one event's worth at most."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

import midway_billing
from midway.fake_upstream import Reply
from midway.sse import encode_event
from midway.testing import FakeUpstream, RecordedRequest, RunningMidway, wait_for
from midway_billing.plugin import Billing

TEXT_EVENTS = 40
CHARS = 2000  # per text delta: 500 output tokens, $0.0075 at Sonnet's $15/MTok
EVENT_USD = Decimal(CHARS // 4) * 15 / 10**6
REQUESTS = 20
LIMIT = Decimal("1.00")


def large_answer(_: RecordedRequest) -> Reply:
    """A stream of 20,000 output tokens ($0.30) for a request that reserves about $0.015."""
    events = [
        encode_event("message_start", {"type": "message_start", "message": {
            "id": "msg_01big", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-6", "content": [], "stop_reason": None,
            "usage": {"input_tokens": 20, "output_tokens": 1}}}),
        encode_event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
        *[encode_event("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "x" * CHARS}})] * TEXT_EVENTS,
        encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        encode_event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": TEXT_EVENTS * CHARS // 4}}),
        encode_event("message_stop", {"type": "message_stop"}),
    ]
    return Reply(events=events, delay=0.002)


async def fire(url: str) -> list[bytes]:
    body = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 1000, "stream": True,
                         "messages": [{"role": "user", "content": "write a lot"}]})
    headers = {"x-api-key": "mk-alice", "content-type": "application/json",
               "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as session:

        async def one() -> bytes:
            async with session.post(f"{url}/v1/messages", data=body,
                                    headers=headers) as response:
                return await response.read()

        return list(await asyncio.gather(*[one() for _ in range(REQUESTS)]))


def billing(running: RunningMidway) -> Billing:
    service = running.midway.services["billing"]
    assert isinstance(service, Billing)
    return service


@pytest.mark.attack(4, "20 small concurrent requests stream answers 20× their reservation "
                       "against a $1.00 hard budget")
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_hard_budget_cuts_streams_when_it_runs_out(midway_factory: Any,
                                                   fake_upstream: FakeUpstream, backend: str,
                                                   request: pytest.FixtureRequest) -> None:
    fake_upstream.fake.default = large_answer
    table: dict[str, Any] = {"budgets": [{"scope": "team", "period": "day",
                                          "limit_usd": str(LIMIT), "name": "team-daily"}]}
    if backend == "postgresql":
        table.update(store=request.getfixturevalue("postgres_dsn"),
                     schema=request.getfixturevalue("pg_schema"))
    running = midway_factory(plugins=[("billing", midway_billing)], config={
        "midway": {"client_keys": [{"key": "mk-alice", "name": "alice", "team": "t"}]},
        "billing": table})
    bodies = asyncio.run(fire(running.url))

    store = billing(running).store

    def settled() -> list[dict[str, Any]]:
        rows = running.call(store.rows())
        return rows if len(rows) == REQUESTS and \
            all(r["state"] == "settled" for r in rows) else []

    wait_for(lambda: bool(settled()))
    total = Decimal(sum(int(r["cost_pusd"]) for r in settled())) / 10**12
    cut = [b for b in bodies if b"event: error" in b]
    for body in cut:
        tail = body[body.rindex(b"event: error"):]
        assert b"rate_limit_error" in tail and b"hard budget ran out" in tail, tail
        assert b"message_stop" not in body
    # Uncut, the 20 answers cost $6.00; cut, the spend passes the limit by one event at most.
    assert total <= LIMIT + EVENT_USD, (total, len(cut))
    assert cut, "no stream was cut"
    assert total > LIMIT / 2, total  # the budget was spent, not refused up front
    counters = running.call(store.counters(
        [k for k in running.call(store.db.fetch("SELECT key FROM billing_counters"))
         for k in [k["key"]]]))
    assert all(reserved == 0 for _, reserved in counters.values()), counters
