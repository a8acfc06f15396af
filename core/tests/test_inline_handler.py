"""midway.inline_handler: a request's handler runs in its connection's task (no task a request),
at once, and is still cancelled when its client goes away; every other task is made as
before."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from midway import deadlines, inline_handler

pytestmark = pytest.mark.skipif(not inline_handler.APPLIES,
                                reason="aiohttp starts the request's task eagerly here")

LIMITS = deadlines.Limits(header_timeout=30, body_timeout=30, keepalive_timeout=75,
                          write_stall_timeout=30)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """On the default loop and on uvloop (midway serve's)."""
    runner: Any = asyncio.run if request.param == "asyncio" else uvloop.run
    return lambda coro: runner(asyncio.wait_for(coro, 30))


async def _serve(app: web.Application) -> tuple[deadlines.GuardedRunner, int]:
    runner = deadlines.GuardedRunner(app, LIMITS, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def test_requests_on_a_connection_run_in_its_task_and_other_tasks_are_tasks(
        run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def main() -> None:
        tasks: list[asyncio.Task[Any] | None] = []
        made: list[object] = []

        async def handle(request: web.Request) -> web.Response:
            tasks.append(asyncio.current_task())
            # a task the handler makes is a real task, as ever (context given or not)
            made.append(asyncio.get_running_loop().create_task(asyncio.sleep(0)))
            made.append(asyncio.get_running_loop().create_task(
                asyncio.sleep(0), context=contextvars.copy_context()))
            await asyncio.gather(*made[-2:])  # type: ignore[arg-type]
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", handle)
        runner, port = await _serve(app)
        loop = asyncio.get_running_loop()
        try:
            assert loop.get_task_factory() is not None
            async with aiohttp.ClientSession() as session:  # one kept-alive connection
                for _ in range(3):
                    async with session.get(f"http://127.0.0.1:{port}/") as resp:
                        assert await resp.text() == "ok"
        finally:
            await runner.cleanup()
        assert loop.get_task_factory() is None  # let go of with the server
        # one task, the connection's, for the three requests (a task each before)
        assert len({id(t) for t in tasks}) == 1 and tasks[0] is not None
        assert all(isinstance(t, asyncio.Task) for t in made)

    run(main())


def test_a_client_that_goes_away_cancels_its_handler(
        run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def main() -> None:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def handle(request: web.Request) -> web.Response:
            started.set()
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return web.Response(text="never")

        app = web.Application()
        app.router.add_get("/", handle)
        runner, port = await _serve(app)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await started.wait()
            writer.close()
            await cancelled.wait()
        finally:
            await runner.cleanup()

    run(main())


def test_a_task_factory_of_the_loops_own_is_left_alone(
        run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        def own(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(own)
        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text="ok"))
        runner, port = await _serve(app)
        try:
            assert loop.get_task_factory() is own
            async with aiohttp.ClientSession() as session, \
                    session.get(f"http://127.0.0.1:{port}/") as resp:
                assert await resp.text() == "ok"
        finally:
            await runner.cleanup()
        assert loop.get_task_factory() is own

    run(main())
