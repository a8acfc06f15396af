"""A lean HTTP/1.1 client for the native upstream path.

aiohttp's ``ClientSession.request`` builds URL, header, request and response objects meant for
any use; midway forwards one known shape of request, so most of that work is wasted CPU. This
client writes the request in one go (request line, headers, body), parses the answer with
llhttp (``httptools``) and hands body chunks to the relay as they arrive. It keeps idle
keep-alive connections per (scheme, host, port), never reuses a connection whose answer was
not read to its end, pauses reading while the consumer is behind, and applies a connect
timeout and an idle (between-bytes) timeout. No redirects, no cookies, no proxies, no
decompression: the relay does what it needs itself.

Failures use aiohttp's exception types (``ServerDisconnectedError``, ``ClientPayloadError``)
plus :class:`UpstreamUnreachable`, so the relay handles both clients the same way; its answer
is a :class:`midway.answer.Answer` as it stands (aiohttp's is adapted by ``ClientAnswer``).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from sys import intern
from typing import Any, cast

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from midway.sharedtimer import SharedTimer

# Buffered body bytes above which reading pauses until the consumer catches up.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Idle connections older than this are not reused: servers close idle keep-alive
# connections after a while (aiohttp's client uses the same figure).
KEEPALIVE_SECONDS = 15.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UpstreamUnreachable(aiohttp.ClientConnectionError):
    """The upstream could not be connected to (DNS, refused, TLS handshake, connect timeout);
    ``cause`` is the error underneath (:func:`midway.upstream_errors.connect_cause`)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class UnsupportedURL(ValueError):
    """A URL this client does not handle (the caller uses aiohttp instead)."""


class _Origin:
    __slots__ = ("authority", "host", "key", "port", "scheme")

    def __init__(self, scheme: str, host: str, port: int, authority: str) -> None:
        self.scheme, self.host, self.port, self.authority = scheme, host, port, authority
        self.key = (scheme, host, port)


def _split(url: str) -> tuple[str, str]:
    """``scheme://authority`` and the request target (path and query, as given)."""
    start = url.find("://")
    if start < 0:
        raise UnsupportedURL(url)
    slash = url.find("/", start + 3)
    query = url.find("?", start + 3)
    cut = min(i for i in (slash, query, len(url)) if i >= 0)
    target = url[cut:] or "/"
    if target.startswith("?"):
        target = "/" + target
    return url[:cut], target


def _parse_origin(base: str) -> _Origin:
    scheme, _, authority = base.partition("://")
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS or not authority or "@" in authority:
        raise UnsupportedURL(base)
    if authority.startswith("["):  # [IPv6]:port
        end = authority.find("]")
        host, rest = authority[1:end], authority[end + 1:]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = authority.partition(":")
    try:
        port = int(port_text) if port_text else _DEFAULT_PORTS[scheme]
    except ValueError:
        raise UnsupportedURL(base) from None
    # The Host header names the port only when it is not the scheme's default (as aiohttp).
    authority = (f"[{host}]" if ":" in host else host) + \
        ("" if port == _DEFAULT_PORTS[scheme] else f":{port}")
    return _Origin(scheme, host, port, authority)


class UpstreamResponse:
    """The answer's status and headers, and its body as it arrives: a
    :class:`midway.answer.Answer`.
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_eof",
        "_error",
        "_idle_timeout",
        "_loop",
        "_size",
        "_waiter",
        "content_length",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, status: int, headers: CIMultiDictProxy[str],
                 idle_timeout: float | None) -> None:
        self.status = status
        self.headers = headers
        length = headers.get("content-length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self._conn: _Connection | None = conn
        # a list, not a deque: a deque's first block alone is 760 bytes, for each open answer
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[bytes] | None = None  # a reader waiting for bytes
        self._idle_timeout = idle_timeout
        self._loop = conn.loop

    body = None  # never in memory as a whole: see Answer.body

    # -- fed by the connection ---------------------------------------------------------------

    def _fed(self) -> None:
        """Body bytes were appended (by the connection, for one read): hand them to a reader
        waiting, else pause reading once the buffer is past its high-water mark."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(self._take())
                return
        if self._size > HIGH_WATER and self._conn is not None:
            self._conn.pause()

    def _feed_eof(self) -> None:
        self._eof = True
        self._conn = None
        self._end()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._conn = None
        self._end()

    def _end(self) -> None:
        """No more bytes come: a reader waiting gets what is left, or the end."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                self._settle(waiter)

    def _settle(self, waiter: asyncio.Future[bytes]) -> None:
        if self._chunks:
            waiter.set_result(self._take())
        elif self._error is not None:
            waiter.set_exception(self._error)
        else:
            waiter.set_exception(StopAsyncIteration())

    def _take(self) -> bytes:
        """Everything buffered, as one bytes object."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        return data

    # -- read by the relay -------------------------------------------------------------------

    def _on_idle(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(TimeoutError("upstream idle timeout"))
        self.release()

    def chunks(self) -> AsyncIterator[bytes]:
        # Its own iterator, not an async generator around a coroutine: a slow stream waits
        # most of its life, and each frame in the chain waiting is held per open stream.
        return self

    def __aiter__(self) -> UpstreamResponse:
        return self

    def ready(self) -> bool:
        return bool(self._chunks)

    def ended(self) -> bool:
        return self._eof and not self._chunks

    def __anext__(self) -> asyncio.Future[bytes]:
        """Everything buffered (waiting for some if nothing is): a future, not a coroutine,
        so that a stream waiting for its next bytes holds no frame of its own. It ends with
        ``StopAsyncIteration``, or the error that ended the answer."""
        waiter: asyncio.Future[bytes] = self._loop.create_future()
        if self._chunks or self._eof or self._error is not None:
            self._settle(waiter)
            return waiter
        self._waiter = waiter
        conn = self._conn
        if conn is not None and self._idle_timeout is not None:
            conn.watch(self._idle_timeout)
        return waiter

    async def read(self, limit: int = -1) -> bytes:
        """The body to its end, or its first ``limit`` bytes."""
        if self._eof and limit < 0:  # all of it in hand (most JSON answers): taken, no wait
            return self._take() if self._chunks else b""
        parts = []
        size = 0
        while limit < 0 or size < limit:
            try:
                data = await self.__anext__()
            except StopAsyncIteration:
                break
            parts.append(data)
            size += len(data)
        body = b"".join(parts)
        if 0 <= limit < len(body):
            self._chunks.insert(0, body[limit:])
            self._size += len(body) - limit
            body = body[:limit]
        return body

    def release(self) -> None:
        """Done with this answer: a connection still carrying it is closed, never reused."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.abort()


class _Connection(asyncio.Protocol):
    """One upstream connection; parses answers with llhttp's callbacks."""

    def __init__(self, client: UpstreamClient, origin: _Origin,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.origin = origin
        self.loop = loop
        # A body's pieces as llhttp gives them, one per chunk of a chunked body (a stream's
        # event): the parser's on_body is this list's append, a C call, instead of a method
        # with a Python frame per piece (~1 k instructions each, 50 a stream); they go to
        # the answer once per read and at its end (_hand_over). Set before the parser is
        # made: it looks on_body up once.
        self.pieces: list[bytes] = []
        self.on_body: Callable[[bytes], object] = self.pieces.append
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.head_waiter: asyncio.Future[UpstreamResponse] | None = None
        self.response: UpstreamResponse | None = None
        self.header_list: list[tuple[str, str]] = []
        self.idle_timeout: float | None = None
        self.last_io = 0.0  # loop time of the last byte received or the last wait begun
        self.interim = False
        self.until_close = False
        self.closed = False
        self.busy = False
        self.paused = False
        self.got_bytes = False
        self.reused = False
        self.idle_since = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but offer the same API.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.last_io = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._hand_over()  # what came before the malformed part is the answer's
            self._broken(aiohttp.ClientPayloadError(f"malformed upstream response: {exc}"))
            return
        if self.pieces:
            self._hand_over()
        response = self.response
        if response is not None and response._chunks:
            response._fed()  # once per read, however many chunks of the body it held

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost ends a close-delimited body

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._idle_watch.discard(self)
        response = self.response
        if response is not None:
            self.response = None
            if self.until_close and exc is None:
                response._feed_eof()
            else:
                response._fail(aiohttp.ClientPayloadError(
                    "upstream connection lost before the end of the answer"))
        self._fail_head(aiohttp.ServerDisconnectedError())
        self.client._forget(self)

    # -- llhttp callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.header_list = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # Interned: the names, and most values (type, server, organisation, rate limits), are
        # the same in every answer, whose headers last as long as it streams: one string each
        # instead of one per open answer.
        self.header_list.append((intern(name.decode("utf-8", "surrogateescape")),
                                 intern(value.decode("utf-8", "surrogateescape"))))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.interim = status < 200
        if self.interim:  # 1xx: the real answer follows
            return
        waiter = self.head_waiter
        if waiter is None or waiter.done():
            self._broken(aiohttp.ClientPayloadError("unexpected upstream response"))
            return
        headers = CIMultiDictProxy(CIMultiDict(self.header_list))
        self.header_list = []  # not held for as long as the answer lasts
        self.until_close = "content-length" not in headers and \
            "transfer-encoding" not in headers
        response = UpstreamResponse(self, status, headers, self.idle_timeout)
        self.response = response
        self.head_waiter = None
        waiter.set_result(response)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self._hand_over()
        response = self.response
        self.response = None
        if response is not None:
            response._feed_eof()
        if self.paused:
            self.resume()
        self.client._done(self, keep=self.parser.should_keep_alive() and not self.closed)

    def _hand_over(self) -> None:
        """The body pieces the parser gave, to the answer being read (dropped when none is)."""
        pieces = self.pieces
        response = self.response
        if response is not None:
            response._chunks += pieces
            response._size += sum(map(len, pieces))
        pieces.clear()

    # -- used by the client and the response -------------------------------------------------

    def send(self, data: bytes, body: bytes) -> None:
        assert self.transport is not None
        size = len(body)
        if size < 4096:
            self.transport.write(data + body)
        elif size < 65536:  # one writev under uvloop, the body not copied (asyncio joins)
            self.transport.writelines((data, body))
        else:  # never a joined copy of a large body
            self.transport.write(data)
            self.transport.write(body)

    def head(self, idle_timeout: float | None) -> asyncio.Future[UpstreamResponse]:
        """The answer's head once it is in: a future to await (no coroutine of its own)."""
        waiter: asyncio.Future[UpstreamResponse] = self.loop.create_future()
        self.head_waiter = waiter
        self.idle_timeout = idle_timeout
        if idle_timeout is not None:
            self.watch(idle_timeout)
        return waiter

    def watch(self, timeout: float) -> None:
        """A reader starts waiting: fail it after ``timeout`` seconds without a byte (the
        client's one timer watches every connection)."""
        self.last_io = self.loop.time()
        self.idle_timeout = timeout
        if not self.closed:
            self.client._idle_watch.watch(self, self.last_io + timeout, self.loop)

    def idle_check(self, now: float) -> float | None:
        """When this connection's reader is late if no byte comes (``None``: no reader is
        waiting); one late by ``now`` is failed (and ``None`` returned)."""
        response = self.response
        waiting = self.head_waiter is not None or (
            response is not None and response._waiter is not None and
            not response._waiter.done())
        if not waiting or self.closed or self.idle_timeout is None:
            return None
        due = self.last_io + self.idle_timeout
        if now < due:
            return due
        if response is not None:
            response._on_idle()
        else:
            self._fail_head(TimeoutError("upstream idle timeout"))
        return None

    def _fail_head(self, error: BaseException) -> None:
        waiter = self.head_waiter
        if waiter is not None:
            self.head_waiter = None
            if not waiter.done():
                waiter.set_exception(error)
            self.abort()

    def _broken(self, error: BaseException) -> None:
        response = self.response
        self.response = None
        if response is not None:
            response._fail(error)
        self._fail_head(error)
        self.abort()

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.client._idle_watch.discard(self)
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self.client._done(self, keep=False)


class UpstreamClient:
    """A pool of keep-alive connections, at most ``limit`` carrying a request at a time."""

    def __init__(self, connect_timeout: float | None = 10.0, idle_timeout: float | None = 600.0,
                 limit: int = 256, ssl_context: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.limit = limit
        self._ssl = ssl_context
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._busy = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        # Connections whose reader waits, checked by one timer (a timer per connection held
        # ~450 bytes for as long as a stream lasts).
        self._idle_watch: SharedTimer[_Connection] = SharedTimer(_Connection.idle_check)

    def request(self, method: str, url: str, headers: Mapping[str, str],
                body: bytes = b"") -> Coroutine[Any, Any, UpstreamResponse]:
        """Send one request: a coroutine that returns once the answer's headers are in.
        A URL this client does not handle raises :class:`UnsupportedURL` here, at the call
        (the caller may take another client); the request is serialised here too, so that
        the coroutine awaited is the one that waits (no frame more in the chain)."""
        base, target = _split(url)
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origins[base] = _parse_origin(base)
        return self._attempt(origin, _serialize(method, target, origin.authority, headers, body),
                             body)

    async def _attempt(self, origin: _Origin, head: bytes, body: bytes) -> UpstreamResponse:
        fresh = False
        while True:
            # No coroutine of its own for what is mostly done at once (a free slot, an idle
            # connection): each costs as much as what it does, on the way of every request.
            if 0 < self.limit <= self._busy:  # a limit of 0: unlimited, as in aiohttp
                await self._wait_for_slot()
            else:
                self._busy += 1
            try:
                conn = None if fresh else self._idle_connection(origin)
                if conn is None:
                    conn = await self._connect(origin)
            except BaseException:
                self._give_slot()
                raise
            conn.busy = True  # from here the connection owns the slot (see _done)
            conn.got_bytes = False
            try:
                conn.send(head, body)
                return await conn.head(self.idle_timeout)
            except aiohttp.ServerDisconnectedError:
                conn.abort()
                if not conn.reused or conn.got_bytes:
                    raise
            except BaseException:
                conn.abort()
                raise
            # A reused connection the server had already closed: it never saw the request,
            # which goes once more, on a new connection.
            fresh = True

    def _idle_connection(self, origin: _Origin) -> _Connection | None:
        """A kept-alive connection to ``origin`` to reuse, if there is one."""
        idle = self._idle.get(origin.key)
        if idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < KEEPALIVE_SECONDS:
                    conn.reused = True
                    return conn
                conn.abort()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        conn = _Connection(self, origin, loop)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(lambda: conn, origin.host, origin.port, ssl=tls,
                                             server_hostname=origin.host if tls else None)
        except OSError as exc:
            raise UpstreamUnreachable(f"cannot connect to {origin.authority}: {exc}",
                                      exc) from None
        self._all.add(conn)
        return conn

    async def _wait_for_slot(self) -> None:
        """Wait until a request that ends hands its slot over (every slot is taken)."""
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter  # the slot was handed over by _give_slot
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give_slot()
            else:
                self._slot_waiters.remove(waiter)
            raise

    def _give_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; the count stays
                return
        self._busy -= 1

    def _done(self, conn: _Connection, keep: bool) -> None:
        """A connection's answer ended (``keep``: it may carry another)."""
        if conn.busy:
            conn.busy = False
            self._give_slot()
            if keep and not conn.closed:
                conn.idle_since = time.monotonic()
                self._idle.setdefault(conn.origin.key, []).append(conn)
                if self._sweeper is None:
                    self._sweeper = asyncio.get_running_loop().call_later(
                        KEEPALIVE_SECONDS, self._sweep)
                return
        if not keep and not conn.closed:
            conn.abort()

    def _sweep(self) -> None:
        """Close connections idle for longer than the keep-alive period (one timer per pool)."""
        self._sweeper = None
        deadline = time.monotonic() - KEEPALIVE_SECONDS
        remaining = False
        for key, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if conn.closed or conn.idle_since <= deadline:
                    conn.abort()
                else:
                    keep.append(conn)
            if keep:
                self._idle[key] = keep
                remaining = True
            else:
                del self._idle[key]
        if remaining:
            self._sweeper = asyncio.get_running_loop().call_later(KEEPALIVE_SECONDS,
                                                                  self._sweep)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.origin.key)
        if idle and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.origin.key]
        self._done(conn, keep=False)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._idle_watch.cancel()
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
        self._idle.clear()


def _serialize(method: str, target: str, authority: str, headers: Mapping[str, str],
               body: bytes) -> bytes:
    """The request line and headers, with Host (unless given) and Content-Length set here."""
    host = "" if "host" in headers else f"host: {authority}\r\n"
    lines = [f"{method} {target} HTTP/1.1\r\n{host}"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body)}\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    # Each piece ends its own line: a CR or LF anywhere else would inject a header.
    expected = len(lines) + (1 if host else 0)
    if text.count("\n") != expected or text.count("\r") != expected:
        raise ValueError("a CR or LF in the upstream request line or a header")
    return text.encode("utf-8", "surrogateescape")
