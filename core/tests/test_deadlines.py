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
    return guard.head_timer, guard.inner._keepalive_handle  # type: ignore[attr-defined]


def test_a_stream_lets_go_of_the_head_and_keepalive_timers_until_it_ends(
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
