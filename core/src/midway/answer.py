"""An answer as the relay sees it: status, headers and body chunks, whoever produced it.

The relay has one path for every answer. The lean client's :class:`~midway.upstream_client.
UpstreamResponse` implements :class:`Answer` itself; :class:`ClientAnswer` adapts aiohttp's
``ClientResponse``; :class:`TranslatedAnswer` turns another vendor's answer into Anthropic's
through an :class:`~midway.exchange.Adapter`; :class:`MemoryAnswer` is an answer already in
memory (a plugin's ``Response``, a body read for ``upstream_response``, the test harness).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from midway.exchange import Adapter, Exchange

SSE = "text/event-stream"
# What Anthropic sends during a quiet stream; Claude Code counts every byte against its 300 s
# watchdog, and SDKs skip the event.
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


class Answer(Protocol):
    """One answer's head and body. ``release()`` is called once the relay is done with it."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> CIMultiDictProxy[str] | CIMultiDict[str]: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def body(self) -> bytes | None:
        """The whole body when it is already in memory (it is then relayed as one piece)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, unchanged."""
        ...

    def ready(self) -> bool:
        """Whether body bytes are in hand: ``chunks()`` gives its next piece without waiting
        (``False`` when not known)."""
        ...

    def ended(self) -> bool:
        """Whether the body ended where the last piece ``chunks()`` gave ended: no more bytes
        and no error come (``False`` when not known)."""
        ...

    async def read(self, limit: int = -1) -> bytes:
        """The body to its end, or its first ``limit`` bytes."""
        ...

    def release(self) -> None:
        """Done with this answer: free its connection (closed if the body was not read)."""
        ...


class ClientAnswer:
    """aiohttp's ``ClientResponse`` (adapter upstreams, env proxies) as an :class:`Answer`."""

    __slots__ = ("_resp",)
    body = None

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._resp.headers

    @property
    def content_length(self) -> int | None:
        return self._resp.content_length

    def chunks(self) -> AsyncIterator[bytes]:
        return self._resp.content.iter_any()

    def ready(self) -> bool:
        return False

    def ended(self) -> bool:
        return self._resp.content.at_eof()

    async def read(self, limit: int = -1) -> bytes:
        if limit < 0:
            return await self._resp.read()
        parts: list[bytes] = []
        size = 0
        while size < limit:  # content.read(n) returns what has arrived, up to n
            part = await self._resp.content.read(limit - size)
            if not part:
                break
            parts.append(part)
            size += len(part)
        return b"".join(parts)

    def release(self) -> None:
        self._resp.release()


class PrefixedAnswer:
    """``answer`` whose first bytes, ``prefix``, were read already (to judge an error body
    longer than what was read): relayed as prefix then the rest, nothing dropped."""

    __slots__ = ("_answer", "_prefix")
    body = None

    def __init__(self, answer: Answer, prefix: bytes) -> None:
        self._answer, self._prefix = answer, prefix

    @property
    def status(self) -> int:
        return self._answer.status

    @property
    def headers(self) -> CIMultiDictProxy[str] | CIMultiDict[str]:
        return self._answer.headers

    @property
    def content_length(self) -> int | None:
        return self._answer.content_length

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._prefix
        async for chunk in self._answer.chunks():
            yield chunk

    async def read(self, limit: int = -1) -> bytes:
        rest = await self._answer.read(limit - len(self._prefix) if limit >= 0 else -1)
        body = self._prefix + rest
        return body if limit < 0 else body[:limit]

    def ready(self) -> bool:
        return False

    def ended(self) -> bool:
        return False

    def release(self) -> None:
        self._answer.release()


class MemoryAnswer:
    """An answer held in memory: a whole ``body``, or ``stream`` (bytes, sync or async)."""

    __slots__ = ("_stream", "body", "content_length", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str] | None = None,
                 body: bytes | None = None,
                 stream: AsyncIterable[bytes] | Iterable[bytes] | None = None) -> None:
        self.status = status
        self.headers: CIMultiDictProxy[str] | CIMultiDict[str] = CIMultiDict(headers or {})
        self.body = body if stream is None else None
        self.content_length = len(body) if self.body is not None and body is not None else None
        self._stream = stream

    @classmethod
    def buffered(cls, answer: Answer, body: bytes) -> MemoryAnswer:
        """``answer`` whose body has been read into ``body`` (``answer`` is released)."""
        answer.release()
        return cls(answer.status, answer.headers, body)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.body is not None:
            if self.body:
                yield self.body
            return
        stream = self._stream
        if isinstance(stream, AsyncIterable):
            async for chunk in stream:
                yield chunk
        elif stream is not None:
            for chunk in stream:
                yield chunk

    async def read(self, limit: int = -1) -> bytes:
        body = self.body if self.body is not None else \
            b"".join([chunk async for chunk in self.chunks()])
        return body if limit < 0 else body[:limit]

    def ready(self) -> bool:
        return False

    def ended(self) -> bool:
        return False

    def release(self) -> None:
        pass


class TranslatedAnswer:
    """Another vendor's answer, read through ``adapter``, as Anthropic's.

    The status is the vendor's; its headers pass through (rate-limit headers reach
    ``upstream_response``) except the content type, which becomes Anthropic's, and the
    encoding and length, which no longer apply.
    """

    __slots__ = ("_adapter", "_answer", "_exchange", "_stream", "headers", "status")
    body = None
    content_length = None

    def __init__(self, answer: Answer, adapter: Adapter, exchange: Exchange) -> None:
        self._answer, self._adapter, self._exchange = answer, adapter, exchange
        self.status = answer.status
        content_type = answer.headers.get("content-type", "")
        self._stream = answer.status < 400 and (SSE in content_type or
                                                "eventstream" in content_type)
        headers = CIMultiDict(answer.headers)
        for name in ("content-encoding", "content-length"):
            headers.popall(name, None)
        headers["content-type"] = "text/event-stream; charset=utf-8" if self._stream else \
            "application/json"
        self.headers: CIMultiDictProxy[str] | CIMultiDict[str] = headers

    async def chunks(self) -> AsyncIterator[bytes]:
        if not self._stream:
            yield await self.read()
            return
        translator = self._adapter.stream_translator(self._exchange)
        # Vendors that send no pings of their own (OpenAI-compatible, Bedrock) get ours
        # during silent gaps; translated output is whole events, so a ping lands between two.
        interval = getattr(self._adapter, "ping_interval", 0.0) or 0.0
        source = self._answer.chunks() if interval <= 0 else \
            with_pings(self._answer.chunks(), interval)
        try:
            async for chunk in source:
                out = PING if chunk is None else translator.feed(chunk)
                if out:
                    yield out
        finally:
            if interval > 0:
                await source.aclose()  # type: ignore[attr-defined]
        tail = translator.close()
        if tail:
            yield tail

    async def read(self, limit: int = -1) -> bytes:
        """The translated body (a vendor body is translated whole; ``limit`` bounds what is
        read of it)."""
        body = await self._answer.read(limit)
        answer = self._answer
        if self.status >= 400:
            return self._adapter.translate_error(self.status, answer.headers, body)
        return self._adapter.translate_json(self._exchange, body)

    def ready(self) -> bool:
        return False

    def ended(self) -> bool:
        return False

    def release(self) -> None:
        self._answer.release()


async def with_pings(source: AsyncIterator[bytes], interval: float
                     ) -> AsyncIterator[bytes | None]:
    """``source``'s chunks, and ``None`` each time it stays silent for ``interval`` seconds
    (the chunk being waited for is still delivered when it comes)."""
    pending: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait((pending,), timeout=interval)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                chunk = finished.result()
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        if pending is not None:
            pending.cancel()
