"""What an open stream holds (docs/benchmarks.md, "Issue 24 target 5"): the relay lets go of
what it needs only at a stream's start, and keeps one copy of what repeats between streams."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections import deque
from unittest import mock

import pytest
from aiohttp import StreamReader, web
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict, CIMultiDictProxy
from test_upstream_client import RawServer, answer

from midway.headers import request_headers, response_headers
from midway.heap import drop_read_buffer
from midway.plugins import module_plugin
from midway.testing import Harness
from midway.upstream_client import UpstreamClient

HEADERS = [("Content-Type", "text/event-stream"), ("request-id", "req_1"),
           ("Cache-Control", "no-cache"), ("X-Custom", "a"), ("x-custom", "b"),
           ("Connection", "keep-alive"), ("Transfer-Encoding", "chunked"), ("Server", "up")]


def test_header_copies_keep_order_and_duplicates_and_leave_the_source_as_it_was() -> None:
    def headers() -> CIMultiDictProxy[str]:
        return CIMultiDictProxy(CIMultiDict([(k.encode().decode(), v) for k, v in HEADERS]))

    source = headers()
    tracemalloc.start()
    try:
        response_headers(headers()), request_headers(headers())  # what a first call makes
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        del request_headers(source)["request-id"], response_headers(source)["request-id"]
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    copied = list(response_headers(source).items())
    assert copied == [("Content-Type", "text/event-stream"), ("request-id", "req_1"),
                      ("Cache-Control", "no-cache"), ("X-Custom", "a"), ("x-custom", "b")]
    # Iterating a case-insensitive multidict leaves an istr of each name in it (~70 bytes a
    # header, for as long as the upstream's answer, or aiohttp's request, lasts).
    assert grown < 200, grown
    assert list(request_headers(source).items()) == [*copied, ("Server", "up")]


def test_a_streamed_answer_lets_go_of_its_sent_headers() -> None:
    held: list[int] = []

    def on_chunk(event: object) -> None:
        held.extend(len(r.headers) for r in gc.get_objects()
                    if isinstance(r, web.StreamResponse) and r.prepared)

    plugin = module_plugin("watch", on_chunk=on_chunk,
                           pre_request=lambda exchange: exchange.observe_stream(plugin))

    async def main() -> None:
        async with Harness(plugins=[plugin]) as harness:
            body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
                    "messages": [{"role": "user", "content": "Hello"}]}
            result = await harness.request(body)
            assert result.status == 200
            assert "text/event-stream" in result.headers["content-type"]
            assert result.headers["x-midway-request-id"] == result.exchange.id

    asyncio.run(main())
    assert held and set(held) == {0}


def test_answers_share_their_repeated_header_strings_and_a_wait_holds_no_coroutine() -> None:
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nserver: up\r\n"
            b"transfer-encoding: chunked\r\n\r\n")

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(head + b"5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        return True

    async def main() -> None:
        async with RawServer(answer(head + b"0\r\n\r\n"), slow) as server:
            client = UpstreamClient()
            first = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            assert await first.read() == b""
            second = await client.request("POST", server.url + "/v1/messages", {}, b"{}")
            assert first.headers["content-type"] is second.headers["content-type"]
            assert first.headers.getone("server") is second.headers.getone("server")
            assert await anext(second.chunks()) == b"hello"
            waiting = second.__anext__()
            assert isinstance(waiting, asyncio.Future)  # not a coroutine with its frame
            with pytest.raises(StopAsyncIteration):
                await waiting
            await client.close()

    asyncio.run(main())


def test_a_cancelled_read_leaves_the_answer_readable() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
    go = asyncio.Event()

    async def later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(head)
        await writer.drain()
        await go.wait()
        writer.write(b"3\r\nabc\r\n0\r\n\r\n")
        return True

    async def main() -> None:
        async with RawServer(later) as server:
            client = UpstreamClient(idle_timeout=5)
            resp = await client.request("POST", server.url + "/x", {}, b"{}")
            reader = asyncio.ensure_future(resp.__anext__())
            await asyncio.sleep(0.01)
            reader.cancel()
            go.set()
            assert await resp.read() == b"abc"
            await client.close()

    asyncio.run(main())


def test_streams_observed_alike_share_their_on_chunk_callers() -> None:
    callers: list[object] = []
    seen: list[str] = []

    def on_chunk(exchange: object, event: object) -> None:
        seen.append(exchange.id)  # type: ignore[attr-defined]
        if len(callers) < len(set(seen)):  # once a stream: what its relay's frame holds
            relaying = [o for o in gc.get_objects() if asyncio.iscoroutine(o)
                        and o.__qualname__ == "Proxy._relay_events" and o.cr_frame is not None]
            callers.extend(o.cr_frame.f_locals["callers"] for o in relaying)

    plugin = module_plugin("watch", on_chunk=on_chunk,
                           pre_request=lambda exchange: exchange.observe_stream(plugin))

    async def main() -> list[str]:
        async with Harness(plugins=[plugin]) as harness:
            body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
                    "messages": [{"role": "user", "content": "Hello"}]}
            first = await harness.request(body)
            second = await harness.request(body)
            return [first.exchange.id, second.exchange.id]

    ids = asyncio.run(main())
    assert set(seen) == set(ids)  # each stream's own exchange passed
    assert len(callers) == 2 and callers[0] is callers[1]


def test_a_request_body_read_to_its_end_lets_go_of_its_readers_buffer() -> None:
    async def main() -> None:
        protocol = mock.Mock(_reading_paused=False)
        reader = StreamReader(protocol, 2 ** 16, loop=asyncio.get_running_loop())
        reader.feed_data(b"body")
        drop_read_buffer(reader)  # not at its end yet: kept
        assert type(reader._buffer) is deque
        reader.feed_eof()
        assert await reader.readany() == b"body"
        drop_read_buffer(reader)
        assert type(reader._buffer) is not deque
        assert reader.at_eof() and await reader.readany() == b"" and await reader.read() == b""
        drop_read_buffer(EMPTY_PAYLOAD)  # not one with a buffer of its own
        assert await EMPTY_PAYLOAD.readany() == b""

    asyncio.run(main())


def test_a_stream_holds_no_buffer_of_its_read_request_body() -> None:
    buffers: list[type] = []

    def on_chunk(event: object) -> None:
        buffers.extend(type(r.content._buffer) for r in gc.get_objects()
                       if isinstance(r, web.BaseRequest) and r.method == "POST")

    plugin = module_plugin("watch", on_chunk=on_chunk,
                           pre_request=lambda exchange: exchange.observe_stream(plugin))

    async def main() -> None:
        async with Harness(plugins=[plugin]) as harness:
            body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
                    "messages": [{"role": "user", "content": "Hello"}]}
            result = await harness.request(body)
            assert result.status == 200 and result.exchange.request.body

    asyncio.run(main())
    assert buffers and deque not in buffers
