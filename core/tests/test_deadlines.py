"""midway.deadlines: a streaming answer's connection lets go of the timers that only matter
between requests, and gets them back once the stream is done."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from midway import deadlines

LIMITS = deadlines.Limits(header_timeout=30, body_timeout=30, keepalive_timeout=75,
                          write_stall_timeout=30)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """On the default loop and on uvloop (midway serve's)."""
    runner: Any = asyncio.run if request.param == "asyncio" else uvloop.run
    return lambda coro: runner(asyncio.wait_for(coro, 30))


def _timers(request: web.BaseRequest) -> tuple[Any, Any]:
    assert request.transport is not None
    guard = request.transport.get_protocol()
    assert isinstance(guard, deadlines.Guard)
    # (the head deadline: whether the connection is among those its one timer checks)
    head = guard if guard in guard.heads.waiting else None
    return head, guard.inner._keepalive_handle  # type: ignore[attr-defined]


def test_a_stream_lets_go_of_the_head_deadline_and_keepalive_timer_until_it_ends(
        run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    run(_stream_then_request())


async def _stream_then_request() -> None:
    seen: list[tuple[str, bool, bool]] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        head, keepalive = _timers(request)
        seen.append(("before", head is not None, keepalive is not None))
        response = web.StreamResponse()
        await response.prepare(request)
        deadlines.streaming(request)
        head, keepalive = _timers(request)
        seen.append(("streaming", head is not None, keepalive is not None))
        await response.write(b"data: x\n\n")
        return response

    async def plain(request: web.Request) -> web.Response:
        head, keepalive = _timers(request)
        seen.append(("next", head is not None, keepalive is not None))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_get("/plain", plain)
    runner = deadlines.GuardedRunner(app, LIMITS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:  # one kept-alive connection
            for path in ("/stream", "/plain"):
                async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                    await resp.read()
            await asyncio.sleep(0)
    finally:
        await runner.cleanup()
    # The next request on the connection has a head deadline again (armed by its first
    # byte), and aiohttp's keep-alive check was armed again after the stream.
    assert seen == [("before", True, True), ("streaming", False, False),
                    ("next", True, True)]


def test_connections_waiting_for_a_head_share_one_timer_and_a_late_one_gets_a_408(
        run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text="ok"))
        limits = deadlines.Limits(header_timeout=0.3, body_timeout=30, keepalive_timeout=75,
                                  write_stall_timeout=30)
        runner = deadlines.GuardedRunner(app, limits)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            for _, writer in slow:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head never finished
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            assert len(runner.heads.waiting) >= 3 and runner.heads.timer is not None
            for late, _ in slow:  # each cut by the one timer, none left waiting
                assert (await late.read()).startswith(b"HTTP/1.1 408")
            writer.close()
            for _, w in slow:
                w.close()
        finally:
            await runner.cleanup()
        assert not runner.heads.waiting

    run(main())


def test_requests_pipelined_in_one_write_are_answered_in_order(
        run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    """A connection's queue of parsed requests is a list here (aiohttp's deque is ~760 bytes
    even empty, for the connection's life); what a client pipelines is still served in order."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        assert type(request.protocol._messages) is deadlines._RequestQueue  # type: ignore[attr-defined]
        return web.Response(text=request.path)

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = deadlines.GuardedRunner(app, LIMITS)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            paths = [f"/{i}" for i in range(5)]
            writer.write(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                                  for p in paths))
            for path in paths:
                assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
                await reader.readuntil(b"\r\n\r\n" + path.encode())
            writer.close()
        finally:
            await runner.cleanup()
        assert seen == paths

    run(main())
