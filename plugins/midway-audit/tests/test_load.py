"""Under load, with a tenth of the clients leaving mid-stream: exactly one record each."""

from __future__ import annotations

import asyncio

import aiohttp
from conftest import HEADERS, abandon_stream, committed, flush, records, reopen

from midway.testing import Reply, wait_for

TOTAL = 2000
CONCURRENCY = 50


def test_2000_requests_with_10_percent_disconnects_give_2000_records(fake_upstream, audited):
    running = audited(batch_size=64)
    # the streams clients abandon are slow enough that they are still going when they do
    fake_upstream.fake.default = lambda rec: Reply(
        content=[{"type": "text", "text": "one two three four five six"}], text_chunks=6,
        delay=0.05 if b"abandon" in rec.body else 0.002)

    async def load() -> tuple[set[str], set[str]]:
        sem = asyncio.Semaphore(CONCURRENCY)
        completed: set[str] = set()
        abandoned: set[str] = set()
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:

            async def one(i: int) -> None:
                body = {"model": "claude-sonnet-4-6", "max_tokens": 16, "stream": True,
                        "messages": [{"role": "user", "content": f"request {i}"}]}
                async with sem:
                    if i % 10 == 3:
                        body["messages"][0]["content"] += " abandon"
                        abandoned.add(await abandon_stream(session, running.url, body))
                        return
                    async with session.post(f"{running.url}/v1/messages", json=body,
                                            headers=HEADERS) as resp:
                        data = await resp.read()
                        assert resp.status == 200 and data.endswith(
                            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
                        completed.add(resp.headers["x-midway-request-id"])

            await asyncio.gather(*(one(i) for i in range(TOTAL)))
        return completed, abandoned

    completed, abandoned = asyncio.run(load())
    assert (len(completed), len(abandoned)) == (1800, 200)
    # every handler has run post_response (an abandoned one notices the client left on its
    # next write, a little after the client is gone); then shut down: the queue drains
    wait_for(lambda: committed(running) >= TOTAL, timeout=30)
    flush(running)
    reopen(running)
    stored = records(running)
    assert len(stored) == TOTAL
    by_id = {r["id"]: r for r in stored}
    assert set(by_id) == completed | abandoned
    assert {i for i, r in by_id.items() if r["client_disconnected"]} == abandoned
    assert all(r["stop_reason"] == "end_turn" for i, r in by_id.items() if i in completed)
    verified = running.call(running.midway.services["audit"].verify())
    assert verified["ok"] and verified["checked"] == TOTAL
