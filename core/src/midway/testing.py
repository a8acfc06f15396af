"""Test helpers: a fake Anthropic upstream, a running midway with chosen plugins, exchanges.

Installed as a pytest plugin (entry point ``pytest11``), so any project that has midway
installed gets these fixtures:

* ``fake_upstream`` — a :class:`FakeUpstream` on a free loopback port;
* ``midway_factory`` — ``midway_factory(plugins=[...], config={...})`` starts a proxy in front
  of ``fake_upstream`` and stops it after the test;
* ``midway_proxy`` — a proxy with no plugins;
* PostgreSQL and Redis, shared or of the test's own: ``postgres_dsn``, ``pg_schema``,
  ``pg_schema_factory``, ``redis_url``, ``redis_prefix``, ``private_postgres``,
  ``private_redis`` (see :mod:`midway.testing_services`).

For unit tests of a single hook, :func:`make_exchange` builds an exchange and
:func:`call_hook` calls one plugin's implementation, awaiting it if needed.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from midway.config import Settings
from midway.context import Midway
from midway.exchange import Exchange, Principal, Request, Timings, new_request_id
from midway.fake_upstream import FakeAnthropic, RecordedRequest, Reply
from midway.identity import passthrough_principal
from midway.server import PROXY_KEY, build_app, build_midway
from midway.testing_services import (
    PrivatePostgres,
    PrivateRedis,
    free_port,
    pg_query,
    pg_schema,
    pg_schema_factory,
    postgres_dsn,
    private_postgres,
    private_postgres_module,
    private_redis,
    redis_prefix,
    redis_url,
    wait_for,
    wait_listening,
)

T = TypeVar("T")

__all__ = ["FakeUpstream", "PrivatePostgres", "PrivateRedis", "RecordedRequest", "Reply",
           "RunningMidway", "ServerThread", "call_hook", "free_port", "make_exchange",
           "pg_query", "pg_schema", "pg_schema_factory", "postgres_dsn", "private_postgres",
           "private_postgres_module", "private_redis", "redis_prefix", "redis_url", "wait_for",
           "wait_listening"]


class ServerThread:
    """An aiohttp application served from its own thread and event loop."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0,
                 **runner_kwargs: Any) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.runner_kwargs = {"access_log": None, **runner_kwargs}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="midway-test-server")
        self._runner: web.AppRunner | None = None

    def start(self) -> ServerThread:
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, **self.runner_kwargs)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
            self._runner = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class FakeUpstream(ServerThread):
    """A running :class:`~midway.fake_upstream.FakeAnthropic`."""

    def __init__(self, fake: FakeAnthropic | None = None) -> None:
        self.fake = fake or FakeAnthropic()
        # Cancel handlers when midway drops the connection, so cancellation is seen at once.
        super().__init__(self.fake.app, handler_cancellation=True)

    def reply(self, *replies: Reply | Callable[[RecordedRequest], Reply]) -> None:
        self.fake.reply(*replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.fake.requests

    @property
    def messages_requests(self) -> list[RecordedRequest]:
        return self.fake.messages_requests


class RunningMidway(ServerThread):
    """A midway instance served from a thread."""

    def __init__(self, midway: Midway) -> None:
        self.midway = midway
        super().__init__(build_app(midway), handler_cancellation=True,
                         shutdown_timeout=midway.settings.shutdown_timeout)

    @property
    def proxy(self) -> Any:
        return self.app[PROXY_KEY]


def make_settings(tmp: Path, upstream: str, config: dict[str, Any] | None = None,
                  **overrides: Any) -> Settings:
    settings = Settings(upstream=upstream, data_dir=tmp, plugins=[], access_log=False,
                        shutdown_timeout=5.0)
    settings.tables = dict(config or {})
    core = settings.tables.get("midway", {})
    for key, value in {**core, **overrides}.items():
        if key == "client_keys":
            from midway.config import _client_keys
            settings.client_keys = _client_keys(value, "test config")
        else:
            setattr(settings, key, value)
    return settings


def start_midway(tmp: Path, upstream: str, plugins: list[Any] | None = None,
                 config: dict[str, Any] | None = None, **overrides: Any) -> RunningMidway:
    """Start midway with ``plugins`` (objects, or ``(name, object)`` pairs)."""
    settings = make_settings(tmp, upstream, config, **overrides)
    objects = []
    for i, plugin in enumerate(plugins or []):
        if isinstance(plugin, tuple):
            objects.append(plugin)
        else:
            objects.append((getattr(plugin, "__name__", None) or f"plugin{i}", plugin))
    return RunningMidway(build_midway(settings, objects)).start()  # type: ignore[return-value]


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A fake Anthropic API on a free port; ``fake_upstream.reply(Reply(...))`` scripts it."""
    server = FakeUpstream().start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
def midway_factory(fake_upstream: FakeUpstream, tmp_path: Path
                   ) -> Iterator[Callable[..., RunningMidway]]:
    """``midway_factory(plugins=[...], config={...}, **settings)`` → a running proxy."""
    started: list[RunningMidway] = []

    def factory(plugins: list[Any] | None = None, config: dict[str, Any] | None = None,
                upstream: str | None = None, **overrides: Any) -> RunningMidway:
        data_dir = tmp_path / f"midway{len(started)}"
        running = start_midway(data_dir, upstream or fake_upstream.url, plugins, config,
                               **overrides)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def midway_proxy(midway_factory: Callable[..., RunningMidway]) -> RunningMidway:
    """A proxy with no plugins in front of ``fake_upstream``."""
    return midway_factory()


def make_exchange(body: Any = None, headers: dict[str, str] | None = None,
                  path: str = "/v1/messages", method: str = "POST", query: str = "",
                  principal: Principal | None = None, midway: Midway | None = None
                  ) -> Exchange:
    """An exchange as ``pre_request`` would see it, for unit tests of one hook."""
    if body is None:
        body = {"model": "claude-sonnet-4-6", "max_tokens": 64,
                "messages": [{"role": "user", "content": "Hello"}]}
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = CIMultiDict(headers or {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"})
    key = hdrs.get("x-api-key")
    return Exchange(id=new_request_id(),
                    request=Request(method=method, path=path, query_string=query, headers=hdrs,
                                    body=raw),
                    principal=principal or passthrough_principal(key),
                    client_address="127.0.0.1",
                    timings=Timings(started_at=time.time(), started=time.monotonic()),
                    midway=midway)


def call_hook(plugin: Any, hook: str, **kwargs: Any) -> Any:
    """Call ``plugin``'s implementation of ``hook`` with the arguments it asks for."""
    fn = getattr(plugin, hook)
    params = inspect.signature(fn).parameters
    result = fn(**{k: v for k, v in kwargs.items() if k in params})
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable
