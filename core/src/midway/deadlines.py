"""Deadlines on client connections: a client that is slow or idle where midway waits for it,
or that stops reading an answer, loses its connection instead of holding it for ever.

- ``header_timeout``: a connection must deliver a whole request head within this many seconds
  of opening, or of the first byte of its next request (408, then closed).
- ``body_timeout``: while a handler waits for the request body, the client must send some of
  it at least this often (closed).
- ``keepalive_timeout``: an idle connection between requests is closed after this long
  (aiohttp's own keep-alive timer).
- ``write_stall_timeout``: a client that reads nothing of an answer for this long (the
  socket's send buffer stays full) is disconnected, which ends the stream (and its upstream
  request) as a client disconnect does; the request is recorded with
  ``ErrorKind.CLIENT_STALLED`` (:data:`STALLED` on the request says so). Distinct from
  ``idle_timeout``, the upstream's: a stalled client pauses the upstream, never times it out.

None of them applies while a handler streams an answer the client keeps reading, however
long and however slowly the upstream produces it. 0 turns one off.

How: :class:`GuardedRunner` (an ``AppRunner``) hands its sites a protocol that wraps each
aiohttp connection and sees its bytes and its transport's flow control, and wraps the
server's request handler to tell the connection when a request's head is complete and when
its handler ends. The header deadline costs no timer per request nor per connection: one
timer (:class:`midway.sharedtimer.SharedTimer`) checks the connections waiting for a head
when the earliest of them would be late (a timer per connection held ~700 bytes from accept
to the stream's start, as 1,000 streams opening at once all did).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast

import attrs
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler

from midway import inline_handler
from midway.sharedtimer import SharedTimer

_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                b"Content-Length: 0\r\n\r\n")


@attrs.frozen
class Limits:
    """The four deadlines, in seconds (0: none); their defaults are the settings'."""

    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    write_stall_timeout: float

    @classmethod
    def of(cls, settings: Any) -> Limits:
        """The limits a :class:`~midway.config.Settings` sets."""
        return cls(**{field.name: float(getattr(settings, field.name))
                      for field in attrs.fields(cls)})


#: A path prefix and the handler that serves every request under it (GuardedRunner's ``direct``).
Direct = tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]

#: Set (to the timeout, in seconds) on a request whose client was cut for not reading.
STALLED: web.RequestKey[float] = web.RequestKey("midway_write_stalled", float)


# The head deadlines' timer runs this much ahead of the earliest, and a head this close to its
# deadline is late: a timer re-armed for a deadline equal to aiohttp's keep-alive check (armed
# later) still fires first, so that a connection that sent nothing gets its 408 (as when each
# connection armed its own timer before aiohttp's), whatever the loop's timer resolution.
_HEAD_SLACK = 0.005


class _RequestQueue(list[Any]):
    """A connection's queue of parsed requests: a list with the one deque method aiohttp
    calls (``popleft``; it shifts what a pipelining client sent after, usually nothing)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class Guard(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, deadlines around it."""

    __slots__ = ("body_timer", "guards", "head_due", "heads", "inner", "last_data", "limits",
                 "loop", "request", "stall_timer", "state", "transport")

    def __init__(self, inner: asyncio.Protocol, limits: Limits,
                 guards: dict[asyncio.BaseTransport, Guard], heads: SharedTimer[Guard]) -> None:
        self.inner = inner
        self.limits = limits
        self.guards = guards
        self.heads = heads
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.state = "head"  # head: waiting for a request head; handler; idle (between)
        self.request: web.BaseRequest | None = None
        self.last_data = time.monotonic()
        self.head_due = 0.0  # (event loop time) when the awaited request head is late
        self.body_timer: asyncio.TimerHandle | None = None
        self.stall_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol: forwarded to aiohttp, watched on the way --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but behave as one)
        self.transport = cast(asyncio.Transport, transport)
        self.guards[transport] = self
        self._await_head()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == "handler":  # body bytes (the body deadline reads when they came)
            self.last_data = time.monotonic()
        elif state == "idle":  # the first byte of the next request
            self.state = "head"
            self._await_head()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        if self.limits.write_stall_timeout > 0:
            self.stall_timer = self.loop.call_later(self.limits.write_stall_timeout,
                                                    self._stalled)
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.body_timer, self.stall_timer):
            if timer is not None:
                timer.cancel()
        self.body_timer = self.stall_timer = None
        self.heads.discard(self)
        if self.transport is not None:
            self.guards.pop(self.transport, None)
        self.request = None
        self.inner.connection_lost(exc)

    # -- told by the runner's request handler --

    def handler_started(self, request: web.BaseRequest) -> None:
        # Left with the head deadlines: their next check sees the head came (and drops it).
        self.state = "handler"
        self.request = request
        if self.limits.body_timeout > 0 and not request.content.is_eof():
            self.last_data = time.monotonic()
            self.body_timer = self.loop.call_later(self.limits.body_timeout, self._body_check)

    def handler_done(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        self.request = None
        if self.state == "handler":
            self.state = "idle"  # aiohttp's keep-alive timer runs from here

    def streaming(self) -> None:
        """The handler streams an answer: what only matters between requests goes now rather
        than at the next check (the head deadline's, up to ``header_timeout`` later; aiohttp's
        keep-alive timer, up to ``keepalive_timeout`` later): ~500 bytes a connection for as
        long as a slow stream lasts. Not done for every request: on a kept-alive connection
        that would set and cancel aiohttp's timer per request instead of once per timeout."""
        self.heads.discard(self)
        if isinstance(self.inner, RequestHandler) and self.state == "handler":
            # keep_alive(True) cancels the pending check; the flag is already True while a
            # handler runs (a connection not kept alive ends after its response), and
            # aiohttp arms a new check once the handler is done.
            self.inner.keep_alive(True)

    # -- deadlines --

    def _await_head(self) -> None:
        timeout = self.limits.header_timeout
        if timeout > 0:
            self.head_due = self.loop.time() + timeout
            self.heads.watch(self, self.head_due, self.loop)

    def head_check(self, now: float) -> float | None:
        """When the head this connection waits for is late (``None``: it waits for none);
        one late by ``now`` gets a 408 and is closed (and ``None`` returned)."""
        if self.state != "head" or self.transport is None:
            return None  # the head came; the next request's first byte watches again
        if now < self.head_due - _HEAD_SLACK:
            return self.head_due
        self.transport.write(_TIMEOUT_408)
        self.transport.close()
        return None

    def _body_check(self) -> None:
        self.body_timer = None
        request, transport = self.request, self.transport
        if request is None or transport is None or request.content.is_eof():
            return
        quiet = time.monotonic() - self.last_data
        # Reading paused: aiohttp's buffer is full and the handler is not reading it; the
        # client is not the one who is late.
        if quiet < self.limits.body_timeout or not transport.is_reading():
            wait = max(self.limits.body_timeout - quiet, 0.05)
            self.body_timer = self.loop.call_later(wait, self._body_check)
            return
        transport.abort()

    def _stalled(self) -> None:
        self.stall_timer = None
        if self.request is not None:
            self.request[STALLED] = self.limits.write_stall_timeout
        if self.transport is not None:
            self.transport.abort()


def streaming(request: web.BaseRequest) -> None:
    """Tell the connection ``request`` came on that its answer is a stream (see
    :meth:`Guard.streaming`); nothing for a connection midway does not guard."""
    transport = request.transport
    guard = transport.get_protocol() if transport is not None else None
    if isinstance(guard, Guard):
        guard.streaming()


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose sites serve every connection through a :class:`Guard`."""

    def __init__(self, app: web.Application, limits: Limits,
                 direct: Callable[[web.Application], Direct | None] | None = None,
                 **kwargs: Any) -> None:
        keepalive = limits.keepalive_timeout if limits.keepalive_timeout > 0 else 10 ** 9
        super().__init__(app, keepalive_timeout=keepalive, **kwargs)
        self.limits = limits
        self.guards: dict[asyncio.BaseTransport, Guard] = {}
        self.heads: SharedTimer[Guard] = SharedTimer(Guard.head_check, _HEAD_SLACK)
        # Asked once the application is started: a path prefix whose every request the
        # router would hand to one handler, and that handler (called without the router).
        self.direct = direct

    @property
    def shutdown_timeout(self) -> float:
        """How long ``cleanup`` waits for handlers still running before it cancels them."""
        return float(self._shutdown_timeout)

    @shutdown_timeout.setter
    def shutdown_timeout(self, seconds: float) -> None:
        self._shutdown_timeout = seconds

    async def setup(self) -> None:
        await super().setup()
        # Each request's handler runs in its connection's task, not in a task of its own.
        inline_handler.install(asyncio.get_running_loop())
        server = super().server
        assert server is not None
        # Wrapped here rather than in a middleware: aiohttp runs middlewares through several
        # layers of calls per request, and every route needs the guard told.
        routed = server.request_handler
        guards = self.guards
        direct = self.direct(self.app) if self.direct is not None else None
        prefix, shortcut = direct if direct is not None else ("", routed)

        async def guarded(request: web.BaseRequest) -> web.StreamResponse:
            # aiohttp's router costs several calls and objects a request; a request it would
            # route to ``shortcut`` goes there directly (``Expect: 100-continue`` excepted:
            # the router's path answers it). The request factory makes web.Requests.
            handle: Callable[[Any], Awaitable[web.StreamResponse]] = \
                shortcut if direct is not None and \
                request.rel_url.path_safe.startswith(prefix) and \
                hdrs.EXPECT not in request.headers else routed
            guard = guards.get(request.transport) if request.transport is not None else None
            if guard is None:
                return await handle(request)
            guard.handler_started(request)
            try:
                return await handle(request)
            finally:
                guard.handler_done()

        server.request_handler = guarded

    async def cleanup(self) -> None:
        await super().cleanup()
        inline_handler.uninstall(asyncio.get_running_loop())

    @property
    def server(self) -> Any:
        """What sites pass to ``loop.create_server``: aiohttp's protocol factory, wrapped."""
        inner = super().server
        if inner is None:
            return None
        def connection() -> Guard:
            handler = inner()
            # aiohttp queues a connection's parsed requests in a deque, ~760 bytes even empty,
            # for as long as the connection lasts (1,000 open streams held 1,000 of them); it
            # holds one request unless a client pipelines. aiohttp appends, pops left and
            # takes its length: a list serves that.
            if type(getattr(handler, "_messages", None)) is deque and not handler._messages:
                handler._messages = _RequestQueue()  # type: ignore[assignment]
            return Guard(handler, self.limits, self.guards, self.heads)

        return connection
