"""The cache driven in-process (midway.testing.Harness): it observes only the streams it may
store, and replays what it stored."""

from __future__ import annotations

import asyncio

from conftest import body

import midway_cache
from midway.testing import Harness, Reply
from midway_cache import CACHE


def test_only_streamed_misses_are_observed_and_a_stored_stream_replays() -> None:
    async def main() -> None:
        # a rule that opts every request in
        async with Harness(plugins=[("cache", midway_cache)],
                           config={"cache": {"rules": [{"model": "*"}]}}) as h:
            cache = h.midway.services[CACHE]
            h.upstream.reply(Reply(chunk_size=3))
            miss = await h.request(body(stream=True))
            assert miss.headers["x-midway-cache"] == "miss"
            assert miss.exchange.stream_observers == [midway_cache]
            await cache.flush()
            hit = await h.request(body(stream=True))
            assert hit.headers["x-midway-cache"] == "hit"
            assert hit.exchange.stream_observers == []  # a replay is not observed
            assert len(h.upstream.messages_requests) == 1
            assert b"Hello from the fake upstream." in hit.body
            assert hit.exchange.usage.output_tokens == miss.exchange.usage.output_tokens
            json_miss = await h.request(body("Another question"))
            assert json_miss.headers["x-midway-cache"] == "miss"
            assert json_miss.exchange.stream_observers == []  # stored from the whole body
            bypass = await h.request(body("Third", stream=True),
                                     headers={"x-midway-cache": "bypass"})
            assert bypass.exchange.stream_observers == []

    asyncio.run(main())
