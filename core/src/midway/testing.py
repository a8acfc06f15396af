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

For a command, :func:`run_cli` runs ``midway …`` in-process on a configuration of the test's
own, and :func:`check_problems` reads one subject's problems from ``config check --json``.

For unit tests of a single hook, :func:`make_exchange` builds an exchange and
:func:`call_hook` calls one plugin's implementation, awaiting it if needed. Between the two,
:class:`Harness` drives whole exchanges through every hook of the real relay in-process, with
an in-memory fake upstream: no sockets, no threads.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import attrs
import orjson
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy

from midway import deadlines
from midway.agents import agent_ids
from midway.answer import Answer, MemoryAnswer
from midway.config import Settings
from midway.context import Midway
from midway.exchange import Exchange, PreparedRequest, Principal, Request, Timings, new_request_id
from midway.fake_upstream import (
    FakeAnthropic,
    PromptCache,
    RecordedRequest,
    Rendered,
    Reply,
    error_event,
    estimate_tokens,
)
from midway.hookspecs import hookimpl
from midway.hostile_upstream import RawReply, RawRequest, RawUpstream
from midway.identity import passthrough_principal
from midway.model_list import ModelDirectory
from midway.proxy import Proxy
from midway.server import PROXY_KEY, build_app, build_midway, direct_proxy
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

__all__ = ["FakeUpstream", "Harness", "HarnessResult", "PrivatePostgres", "PrivateRedis",
           "PromptCache", "RawReply", "RawRequest", "RawUpstream", "RecordedRequest", "Reply",
           "RunningMidway",
           "ServerThread", "call_hook", "free_port",
           "make_exchange", "pg_query", "pg_schema", "pg_schema_factory", "postgres_dsn",
           "private_postgres", "private_postgres_module", "private_redis", "redis_prefix",
           "redis_url", "wait_for", "wait_listening"]


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

    def _make_runner(self) -> web.AppRunner:
        return web.AppRunner(self.app, **self.runner_kwargs)

    async def _start(self) -> None:
        self._runner = self._make_runner()
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
        """Stop serving (shutdown hooks run); a second call does nothing."""
        if self.loop.is_closed():
            return
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

    def _make_runner(self) -> web.AppRunner:
        # the connection deadlines of `midway serve` (header, body, keep-alive, write stall)
        # (and its direct call of the proxy for /v1/ requests)
        return deadlines.GuardedRunner(self.app, deadlines.Limits.of(self.midway.settings),
                                       direct=direct_proxy, **self.runner_kwargs)

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


@attrs.define
class HarnessResult:
    """What the client received, and the exchange as ``post_response`` left it.
    ``ended``: the response was ended properly (false: left broken, as for an answer the
    upstream cut short)."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    exchange: Exchange
    ended: bool = True

    def json(self) -> Any:
        return orjson.loads(self.body)


class Harness:
    """A midway instance whose requests run through every hook in this event loop.

    The client side is an aiohttp request object fed from memory, the upstream a
    :class:`~midway.fake_upstream.FakeAnthropic` answering in memory (``harness.upstream``:
    script it with ``reply(Reply(...))``, read ``requests``). Everything between them is the
    real relay: authentication, ``pre_request`` … ``on_chunk`` … ``post_response``, retries,
    metrics. ``Reply.chunk_size`` splits the stream, ``error_after`` and ``truncate_after``
    act as over HTTP, ``reset_after`` fails the stream as a lost connection does; timing
    options (delays, stalls) are not acted out.
    """

    def __init__(self, plugins: list[Any] | None = None, config: dict[str, Any] | None = None,
                 data_dir: Path | None = None, **overrides: Any) -> None:
        import tempfile

        if data_dir is None:
            self._tmp: Any = tempfile.TemporaryDirectory(prefix="midway-harness-")
            data_dir = Path(self._tmp.name)
        self.upstream = FakeAnthropic()
        settings = make_settings(data_dir, "http://fake.invalid", config, **overrides)
        self._finished: dict[str, Exchange] = {}
        objects = [p if isinstance(p, tuple) else
                   (getattr(p, "__name__", None) or f"plugin{i}", p)
                   for i, p in enumerate(plugins or [])]
        self.midway = build_midway(settings, [*objects, ("midway.testing", _Recorder(self))])
        self.proxy = Proxy(self.midway)
        self.proxy.send = self._send
        self._started = False

    async def __aenter__(self) -> Harness:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        plugins = self.midway.plugins
        await plugins.each("register_metrics", swallow=False, midway=self.midway)
        await plugins.each("startup", swallow=False, midway=self.midway)
        ModelDirectory.publish(self.midway)
        self.proxy.refresh()
        self._started = True

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        if self.proxy.finishing:
            await asyncio.wait(list(self.proxy.finishing))
        await self.midway.plugins.each("shutdown", swallow=True, midway=self.midway)
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()

    async def request(self, body: Any = None, headers: dict[str, str] | None = None,
                      path: str = "/v1/messages", method: str = "POST") -> HarnessResult:
        """Send one request (``body``: bytes or JSON-able; a short message by default)."""
        if body is None:
            body = {"model": "claude-sonnet-4-6", "max_tokens": 64,
                    "messages": [{"role": "user", "content": "Hello"}]}
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        hdrs = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01",
                "content-type": "application/json", "content-length": str(len(raw)),
                **(headers or {})}
        loop = asyncio.get_running_loop()
        payload = StreamReader(BaseProtocol(loop), 2 ** 16, loop=loop)
        payload.feed_data(raw)
        payload.feed_eof()
        client = _Client()
        request = make_mocked_request(method, path, headers=hdrs, payload=payload,
                                      writer=client,
                                      client_max_size=self.midway.settings.max_body_size)
        await self.proxy.handle(request)
        exchange = self._finished.pop(client.headers["x-midway-request-id"])
        return HarnessResult(client.status, client.headers, b"".join(client.chunks), exchange,
                             client.ended)

    async def _send(self, prepared: PreparedRequest, lean: bool) -> Answer:
        """The in-memory upstream: a PreparedRequest in, the fake's answer as an Answer."""
        rest = prepared.url.split("://", 1)[-1]
        path_qs = rest[rest.find("/"):] if "/" in rest else "/"
        path, _, query = path_qs.partition("?")
        rec = RecordedRequest(method=prepared.method, path=path, query=query,
                              headers=CIMultiDict(prepared.headers), body=prepared.body,
                              received_at=time.monotonic(), finished_at=time.monotonic())
        self.upstream.requests.append(rec)
        if path == "/v1/messages" and prepared.method == "POST":
            rendered = self.upstream.render(rec)
        elif path == "/v1/messages/count_tokens":
            rendered = Rendered(200, {}, body=orjson.dumps(
                {"input_tokens": estimate_tokens(rec.body)}))
        else:
            rendered = Rendered(404, {}, body=orjson.dumps({"type": "error", "error": {
                "type": "not_found_error", "message": f"Not found: {path}"}}))
        headers = CIMultiDict(rendered.headers)
        if rendered.events is None:
            headers["content-type"] = "application/json"
            return MemoryAnswer(rendered.status, CIMultiDictProxy(headers), rendered.body or b"")
        headers["content-type"] = "text/event-stream; charset=utf-8"
        return MemoryAnswer(rendered.status, CIMultiDictProxy(headers),
                            stream=_acted(rendered.events, rendered.reply or Reply()))


async def _acted(events: list[bytes], reply: Reply) -> AsyncIterator[bytes]:
    """A reply's stream as the fake server writes it: split, ended or broken as scripted."""
    size = reply.chunk_size
    for index, event in enumerate(events):
        if reply.error_after is not None and index == reply.error_after:
            event = error_event(reply)
        elif reply.reset_after is not None and index == reply.reset_after:
            raise aiohttp.ClientPayloadError("upstream connection lost before the end of the "
                                             "answer")
        elif reply.truncate_after is not None and index == reply.truncate_after:
            return
        for i in range(0, len(event), size or len(event)):
            yield event[i:i + size] if size else event
        if reply.error_after is not None and index == reply.error_after:
            return


class _Recorder:
    """The harness's own plugin: hands each finished exchange to ``Harness.request``."""

    def __init__(self, harness: Harness) -> None:
        self._harness = harness

    @hookimpl(trylast=True)
    def post_response(self, exchange: Exchange) -> None:
        self._harness._finished[exchange.id] = exchange


class _Client(aiohttp.abc.AbstractStreamWriter):
    """The client end of a harness request: collects what the relay writes."""

    def __init__(self) -> None:
        self.buffer_size = 0
        self.output_size = 0
        self.length = 0
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.chunks: list[bytes] = []
        self.ended = False

    async def write(self, chunk: Any, *, drain: bool = True, LIMIT: int = 0x10000) -> None:
        if chunk:
            self.chunks.append(bytes(chunk))

    async def write_eof(self, chunk: bytes = b"") -> None:
        await self.write(chunk)
        self.ended = True

    async def drain(self) -> None:
        pass

    def enable_compression(self, encoding: str = "deflate", strategy: Any = None) -> None:
        pass

    def enable_chunking(self) -> None:
        pass

    async def write_headers(self, status_line: str, headers: Any) -> None:
        self.status = int(status_line.split(" ", 2)[1])
        self.headers = CIMultiDict(headers)

    def send_headers(self) -> None:
        pass


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
    agent, parent = agent_ids(hdrs)
    return Exchange(id=new_request_id(), agent_id=agent, parent_agent_id=parent,
                    request=Request(method=method, path=path, query_string=query, headers=hdrs,
                                    body=raw),
                    principal=principal or passthrough_principal(key),
                    client_address="127.0.0.1",
                    timings=Timings(started_at=time.time(), started=time.monotonic()),
                    midway=midway)


def run_cli(tmp: Path, plugins: str, command: list[str], toml: str,
            data_dir: Path | None = None) -> tuple[int, str]:
    """``midway COMMAND`` in-process with ``toml`` as its configuration (written to
    ``tmp/midway.toml``), ``data_dir`` (default ``tmp/data``; a running proxy's
    ``midway.settings.data_dir`` to act on its stores) and ``plugins`` (a ``MIDWAY_PLUGINS``
    value: ``""`` for none) loaded. Returns the exit code and what it printed."""
    from click.testing import CliRunner

    from midway.cli import cli

    config = tmp / "midway.toml"
    config.write_text(toml)
    result = CliRunner().invoke(cli, [*command, "--config", str(config),
                                      "--data-dir", str(data_dir or tmp / "data")],
                                env={"MIDWAY_PLUGINS": plugins})
    return result.exit_code, result.output


def check_problems(output: str, subject: str) -> list[str]:
    """The problems ``midway config check --json`` printed for ``subject`` (``core``,
    ``keys`` or a plugin's name)."""
    report = orjson.loads(output)
    return list(next(r for r in report if r["subject"] == subject)["problems"])


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
