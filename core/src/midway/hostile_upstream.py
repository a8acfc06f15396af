"""An upstream that writes its answers byte for byte, framing faults included.

:class:`~midway.fake_upstream.FakeAnthropic` speaks HTTP through aiohttp, which frames every
answer correctly. :class:`RawUpstream` writes the status line, the headers and the body itself,
so an answer can announce a length and close before it, stop a chunked body without its last
chunk, end a close-delimited body anywhere, or stream hundreds of megabytes from a generator.
Served from a thread of its own; :mod:`midway.testing` re-exports both names.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

import attrs


@attrs.define
class RawReply:
    """One answer. ``body`` is bytes or an iterable of pieces (written as they come).

    ``framing``: ``"length"`` sends ``content-length`` (``declared_length``, else the body's
    size — a larger one makes the answer end short of it); ``"chunked"`` sends each piece as a
    chunk and, if ``terminate``, the last chunk; ``"close"`` sends neither and the end of the
    body is the end of the connection. The connection is closed after every answer.
    """

    body: bytes | Iterable[bytes] = b""
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = attrs.field(factory=dict)
    framing: str = "length"
    declared_length: int | None = None
    terminate: bool = True
    together: bool = False  # the head and the whole body in one write (so one read)
    head_first: bool = False  # the head and the first piece in one write, the rest as it comes


@attrs.define
class RawRequest:
    head: bytes
    body: bytes


class RawUpstream:
    """A loopback server answering each request with the next queued :class:`RawReply`."""

    def __init__(self) -> None:
        self.replies: deque[RawReply] = deque()
        self.requests: list[RawRequest] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="midway-raw-upstream")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reply(self, *replies: RawReply) -> None:
        self.replies.extend(replies)

    def start(self) -> RawUpstream:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        if self._server is not None:
            # closed on its own loop's thread: Server.close() from this one raced a connection
            # ending there (both wake the server's waiters; seen as a TypeError in teardown)
            self._call(self._close(self._server))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    @staticmethod
    async def _close(server: asyncio.Server) -> None:
        server.close()
        await server.wait_closed()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.requests.append(RawRequest(head, await reader.readexactly(length)))
            reply = self.replies.popleft() if self.replies else RawReply(
                status=500, body=b'{"type":"error","error":{"type":"api_error",'
                                 b'"message":"no reply queued"}}')
            await _write(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing more to write
        finally:
            writer.close()


async def _write(writer: asyncio.StreamWriter, reply: RawReply) -> None:
    pieces = [reply.body] if isinstance(reply.body, bytes) else reply.body
    lines = [f"HTTP/1.1 {reply.status} X", f"content-type: {reply.content_type}",
             "connection: close", *(f"{k}: {v}" for k, v in reply.headers.items())]
    if reply.framing == "length":
        size = reply.declared_length
        if size is None:
            pieces = [b"".join(pieces)]
            size = len(pieces[0])
        lines.append(f"content-length: {size}")
    elif reply.framing == "chunked":
        lines.append("transfer-encoding: chunked")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    held = [head] if reply.together or reply.head_first else []  # written with what follows
    if not held:
        writer.write(head)
    for piece in pieces:
        if not piece:
            continue
        data = b"%x\r\n%b\r\n" % (len(piece), piece) if reply.framing == "chunked" else piece
        if reply.together:
            held.append(data)
            continue
        if held:  # head_first: the head goes with this first piece
            data = held.pop() + data
        writer.write(data)
        await writer.drain()
    if reply.framing == "chunked" and reply.terminate:
        held.append(b"0\r\n\r\n")
    writer.write(b"".join(held))
    await writer.drain()
