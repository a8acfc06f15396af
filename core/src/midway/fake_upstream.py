"""A scriptable fake of Anthropic's API speaking the real wire format.

It stands in for ``api.anthropic.com`` in tests, demos and on offline machines. Queue answers
with :meth:`FakeAnthropic.reply`; without a queued answer it echoes a short text message.
Every request it receives is recorded in :attr:`FakeAnthropic.requests`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import string
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import orjson
from aiohttp import web
from multidict import CIMultiDict

from midway.sse import encode_event

_B62 = string.ascii_letters + string.digits


def make_id(prefix: str) -> str:
    """An id shaped like Anthropic's (``msg_01…``, ``toolu_01…``, ``req_011C…``)."""
    return prefix + "".join(secrets.choice(_B62) for _ in range(24))


def estimate_tokens(body: bytes) -> int:
    return max(1, len(body) // 4)


class PromptCache:
    """A stand-in for the upstream's prompt cache, for scripted replies: the usage a request
    would report if prefixes were cached as Anthropic caches them — per model, system prompt
    (without Claude Code's attribution line) and tools, the longest run of leading messages
    (``cache_control`` markers aside) that an earlier request sent is read from the cache,
    the rest is written to it, but for a few uncached tokens. Tokens are bytes / 4.

    ``usage(body)`` records the request and returns its ``usage``; ``clear()`` forgets
    everything (as a cache that expired)."""

    UNCACHED = 3

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def clear(self) -> None:
        self._seen.clear()

    def usage(self, body: dict[str, Any]) -> dict[str, int]:
        system = body.get("system")
        if isinstance(system, list) and system and isinstance(system[0], dict) and \
                str(system[0].get("text", "")).startswith("x-anthropic-billing-header:"):
            system = system[1:]
        head = orjson.dumps([body.get("model"), system, body.get("tools")],
                            option=orjson.OPT_SORT_KEYS)
        running = hashlib.sha256(head)
        size = len(head)
        keys = [(running.digest(), size)]
        for message in body.get("messages") or []:
            if isinstance(message, dict) and isinstance(message.get("content"), list):
                message = {**message, "content": [
                    {k: v for k, v in b.items() if k != "cache_control"}
                    if isinstance(b, dict) else b for b in message["content"]]}
            data = orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
            running.update(data)
            size += len(data)
            keys.append((running.digest(), size))
        hit = max((n for key, n in keys if key in self._seen), default=0)
        self._seen.update(key for key, _ in keys)
        total = max(self.UNCACHED + 1, size // 4)
        read = min(hit // 4, total - self.UNCACHED)
        return {"input_tokens": self.UNCACHED, "cache_creation_input_tokens":
                total - read - self.UNCACHED, "cache_read_input_tokens": read,
                "output_tokens": 20}


@attrs.define
class Reply:
    """One scripted answer.

    ``content`` holds Anthropic content blocks: ``{"type": "text", "text": ...}``,
    ``{"type": "thinking", "thinking": ..., "signature": ...}``,
    ``{"type": "tool_use", "name": ..., "input": {...}}`` (ids are added).
    Status >= 400 answers with ``error_type``/``error_message`` in Anthropic's format, or
    ``body`` verbatim when given.
    """

    content: list[dict[str, Any]] = attrs.field(factory=lambda: [
        {"type": "text", "text": "Hello from the fake upstream."}])
    status: int = 200
    usage: dict[str, Any] | None = None
    stop_reason: str | None = None
    model: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    error_type: str | None = None
    error_message: str = "error"
    body: bytes | None = None
    stream: bool | None = None  # None: as the request asks
    chunk_size: int | None = None  # split the stream into writes of this many bytes
    delay: float = 0.0  # seconds between events
    text_chunks: int = 3  # deltas per text block
    json_fragments: int = 3  # input_json_delta fragments per tool_use
    error_after: int | None = None  # emit `event: error` after this many events
    error_event_type: str = "overloaded_error"
    reset_after: int | None = None  # drop the connection after this many events
    stall: float = 0.0  # pings only, for this long, after message_start
    ping_interval: float = 0.5
    truncate_after: int | None = None  # end the body (cleanly) after this many events
    events: list[bytes] | None = None  # raw SSE bytes to send verbatim instead of `content`
    first_byte_delay: float = 0.0  # seconds before the status line (nothing sent until then)


@attrs.define
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes
    received_at: float
    finished_at: float | None = None
    cancelled: bool = False

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@attrs.define
class Rendered:
    """What the fake answers: a JSON ``body``, or a stream of SSE ``events``."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    events: list[bytes] | None = None
    reply: Reply | None = None  # the scripted reply it came from (None: a request error)

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=self.headers,
                            content_type="application/json")


class FakeAnthropic:
    """The fake API. ``app`` is an aiohttp application; :mod:`midway.testing` runs it."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.queue: deque[Reply | Callable[[RecordedRequest], Reply]] = deque()
        self.default: Callable[[RecordedRequest], Reply] | None = None
        self.app = web.Application(client_max_size=1024 * 1024 * 1024,
                                   handler_args={"max_headers": 512})
        self.app.router.add_route("HEAD", "/", self._head)
        self.app.router.add_post("/v1/messages", self._messages)
        self.app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        self.batches = FakeBatches(self)
        self.batches.add_routes(self.app.router)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_get("/_fake/requests", self._log)
        self.app.router.add_route("*", "/{tail:.*}", self._other)

    def reply(self, *replies: Reply | Callable[[RecordedRequest], Reply]) -> None:
        """Queue answers for the next requests to ``/v1/messages``, in order."""
        self.queue.extend(replies)

    @property
    def messages_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    # -- handlers ---------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> RecordedRequest:
        body = await request.read()
        rec = RecordedRequest(method=request.method, path=request.path,
                              query=request.rel_url.raw_query_string,
                              headers=CIMultiDict(request.headers),
                              body=body, received_at=time.monotonic())
        self.requests.append(rec)
        return rec

    async def _head(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _log(self, request: web.Request) -> web.Response:
        """``GET /_fake/requests``: what was received, for tests that run the fake in a
        subprocess (``midway mock-upstream``). Credentials are left out."""
        return web.Response(body=orjson.dumps([{
            "method": r.method, "path": r.path, "query": r.query,
            "headers": {str(k): v for k, v in r.headers.items()
                        if k.lower() not in ("x-api-key", "authorization")},
            "body_size": len(r.body), "received_at": r.received_at,
            "finished_at": r.finished_at, "cancelled": r.cancelled} for r in self.requests]),
            content_type="application/json")

    async def _other(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        rec.finished_at = time.monotonic()
        return _error(404, "not_found_error", f"Not found: {request.path}").response()

    async def _models(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        rec.finished_at = time.monotonic()
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2026-01-01T00:00:00Z"}
                for m in ("claude-opus-4-8", "claude-sonnet-4-6", "claude-haiku-4-5")]
        return web.json_response({"data": data, "has_more": False, "first_id": data[0]["id"],
                                  "last_id": data[-1]["id"]}, headers=_headers())

    async def _count_tokens(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        rec.finished_at = time.monotonic()
        return web.json_response({"input_tokens": estimate_tokens(rec.body)}, headers=_headers())

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        try:
            return await self._answer(request, rec)
        except (asyncio.CancelledError, ConnectionResetError):
            # The peer (midway) went away: the request was cancelled upstream.
            rec.cancelled = True
            raise
        finally:
            rec.finished_at = time.monotonic()

    def render(self, rec: RecordedRequest) -> Rendered:
        """The answer to a ``/v1/messages`` request: the next queued reply, rendered (timing
        and connection faults are the server's to act out). Served over HTTP by ``app``, in
        memory by :class:`midway.testing.Harness`."""
        try:
            body = orjson.loads(rec.body)
        except orjson.JSONDecodeError:
            return _error(400, "invalid_request_error", "There was an error parsing the body.")
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "Request body must be an object.")
        if self.queue:
            item = self.queue.popleft()
            reply = item(rec) if callable(item) else item
        elif self.default is not None:
            reply = self.default(rec)
        elif "x-fake-reply" in rec.headers:
            # A client of a fake in another process scripts its answer: JSON Reply options.
            try:
                reply = Reply(**orjson.loads(rec.headers["x-fake-reply"]))
            except (orjson.JSONDecodeError, TypeError) as exc:
                return _error(400, "invalid_request_error", f"bad x-fake-reply: {exc}")
        else:
            reply = Reply()
        headers = _headers()
        headers.update(reply.headers)
        if reply.status >= 400:
            if reply.body is not None:
                return Rendered(reply.status, headers, body=reply.body, reply=reply)
            return _error(reply.status, reply.error_type or _TYPES.get(reply.status, "api_error"),
                          reply.error_message, headers, reply)
        message = build_message(body, reply, rec.body)
        stream = reply.stream if reply.stream is not None else body.get("stream") is True
        if not stream:
            return Rendered(reply.status, headers, reply=reply,
                            body=reply.body if reply.body is not None else orjson.dumps(message))
        events = reply.events if reply.events is not None else stream_events(message, reply)
        return Rendered(reply.status, headers, events=events, reply=reply)

    async def _answer(self, request: web.Request, rec: RecordedRequest) -> web.StreamResponse:
        rendered = self.render(rec)
        reply = rendered.reply
        if reply is not None and reply.first_byte_delay:
            await asyncio.sleep(reply.first_byte_delay)
        if rendered.events is None or reply is None:
            return rendered.response()
        return await self._stream(request, rendered.events, reply, rendered.headers)

    async def _stream(self, request: web.Request, events: list[bytes], reply: Reply,
                      headers: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(status=reply.status, headers=headers)
        response.content_type = "text/event-stream"
        response.charset = "utf-8"
        response.headers["cache-control"] = "no-cache"
        await response.prepare(request)
        for index, event in enumerate(events):
            if reply.error_after is not None and index == reply.error_after:
                await self._write(response, reply, error_event(reply))
                await response.write_eof()
                return response
            if reply.reset_after is not None and index == reply.reset_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            if reply.truncate_after is not None and index == reply.truncate_after:
                await response.write_eof()
                return response
            await self._write(response, reply, event)
            if index == 0 and reply.stall:
                deadline = time.monotonic() + reply.stall
                while time.monotonic() < deadline:
                    await asyncio.sleep(min(reply.ping_interval, reply.stall))
                    await self._write(response, reply, encode_event("ping", {"type": "ping"}))
            if reply.delay:
                await asyncio.sleep(reply.delay)
        await response.write_eof()
        return response

    @staticmethod
    async def _write(response: web.StreamResponse, reply: Reply, data: bytes) -> None:
        size = reply.chunk_size
        if not size:
            await response.write(data)
            return
        for i in range(0, len(data), size):
            await response.write(data[i:i + size])


_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_BATCH_REQUESTS = 100_000


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class FakeBatches:
    """The Message Batches API (``/v1/messages/batches``): a batch is answered request by
    request from the fake's queue when it is created (errors become ``errored`` results),
    and has ended by the time anyone retrieves it unless :attr:`hold` keeps it
    ``in_progress`` (then :meth:`end` ends them). Results are JSONL lines of
    ``{"custom_id", "result": {"type": "succeeded", "message": {...}}}``. ``results_url``
    names the fake as the request reached it, or :attr:`results_origin` (Anthropic names its
    own public host, whatever address the request came in by)."""

    def __init__(self, fake: FakeAnthropic) -> None:
        self.fake = fake
        self.hold = False
        self.results_origin: str | None = None
        self.objects: dict[str, dict[str, Any]] = {}
        self.results: dict[str, list[bytes]] = {}

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages/batches", self._create)
        router.add_get("/v1/messages/batches", self._list)
        router.add_get("/v1/messages/batches/{id}", self._retrieve)
        router.add_delete("/v1/messages/batches/{id}", self._delete)
        router.add_get("/v1/messages/batches/{id}/results", self._results)
        router.add_post("/v1/messages/batches/{id}/cancel", self._cancel)

    def end(self) -> None:
        """End every batch still in progress."""
        for batch in self.objects.values():
            if batch["processing_status"] != "ended":
                self._finish(batch)

    def _finish(self, batch: dict[str, Any]) -> None:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for line in self.results[batch["id"]]:
            counts[orjson.loads(line)["result"]["type"]] += 1
        origin = batch.pop("_origin")
        batch.update(processing_status="ended", request_counts=counts,
                     ended_at=_rfc3339(time.time()),
                     results_url=f"{self.results_origin or origin}/v1/messages/batches/"
                                 f"{batch['id']}/results")

    async def _create(self, request: web.Request) -> web.Response:
        rec = await self.fake._record(request)
        rec.finished_at = time.monotonic()
        try:
            body = orjson.loads(rec.body)
        except orjson.JSONDecodeError:
            return _error(400, "invalid_request_error",
                          "There was an error parsing the body.").response()
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return _error(400, "invalid_request_error", "requests: Field required").response()
        if len(requests) > MAX_BATCH_REQUESTS:
            return _error(400, "invalid_request_error",
                          f"requests: at most {MAX_BATCH_REQUESTS} requests").response()
        seen: set[str] = set()
        for index, entry in enumerate(requests):
            custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
            if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
                return _error(400, "invalid_request_error",
                              f"requests.{index}.custom_id: String should match pattern "
                              "'^[a-zA-Z0-9_-]{1,64}$'").response()
            if custom_id in seen:
                return _error(400, "invalid_request_error",
                              f"Duplicate custom_id {custom_id!r}").response()
            seen.add(custom_id)
            if not isinstance(entry.get("params"), dict):
                return _error(400, "invalid_request_error",
                              f"requests.{index}.params: Field required").response()
        batch_id = make_id("msgbatch_01")
        lines = []
        for entry in requests:
            raw = orjson.dumps(entry["params"])
            one = RecordedRequest("POST", "/v1/messages", "", rec.headers, raw,
                                  time.monotonic(), time.monotonic())
            rendered = self.fake.render(one)
            answer = orjson.loads(rendered.body) if rendered.body else None
            if rendered.status >= 400 or answer is None:
                result: dict[str, Any] = {"type": "errored", "error": answer or {
                    "type": "error", "error": {"type": "api_error", "message": "error"}}}
            else:
                result = {"type": "succeeded", "message": answer}
            lines.append(orjson.dumps({"custom_id": entry["custom_id"], "result": result}))
        now = time.time()
        batch = {"id": batch_id, "type": "message_batch", "processing_status": "in_progress",
                 "request_counts": {"processing": len(requests), "succeeded": 0,
                                    "errored": 0, "canceled": 0, "expired": 0},
                 "ended_at": None, "created_at": _rfc3339(now),
                 "expires_at": _rfc3339(now + 86400), "archived_at": None,
                 "cancel_initiated_at": None, "results_url": None}
        self.results[batch_id] = lines
        self.objects[batch_id] = {**batch, "_origin": f"{request.scheme}://{request.host}"}
        return web.json_response(batch, headers=_headers())

    def _public(self, batch_id: str) -> dict[str, Any] | None:
        batch = self.objects.get(batch_id)
        if batch is None:
            return None
        if not self.hold and batch["processing_status"] != "ended":
            self._finish(batch)
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    async def _retrieve(self, request: web.Request) -> web.Response:
        rec = await self.fake._record(request)
        rec.finished_at = time.monotonic()
        batch = self._public(request.match_info["id"])
        if batch is None:
            return _not_found(request.match_info["id"])
        return web.json_response(batch, headers=_headers())

    async def _list(self, request: web.Request) -> web.Response:
        rec = await self.fake._record(request)
        rec.finished_at = time.monotonic()
        data = [b for b in (self._public(i) for i in reversed(list(self.objects))) if b]
        return web.json_response({"data": data, "has_more": False,
                                  "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None},
                                 headers=_headers())

    async def _results(self, request: web.Request) -> web.Response:
        rec = await self.fake._record(request)
        rec.finished_at = time.monotonic()
        batch = self._public(request.match_info["id"])
        if batch is None:
            return _not_found(request.match_info["id"])
        if batch["processing_status"] != "ended":
            return _error(400, "invalid_request_error",
                          f"Batch {batch['id']} has not finished processing").response()
        body = b"".join(line + b"\n" for line in self.results[batch["id"]])
        return web.Response(body=body, headers=_headers(), content_type="application/binary")

    async def _cancel(self, request: web.Request) -> web.Response:
        rec = await self.fake._record(request)
        rec.finished_at = time.monotonic()
        batch = self.objects.get(request.match_info["id"])
        if batch is None:
            return _not_found(request.match_info["id"])
        if batch["processing_status"] == "in_progress":
            # Requests not yet processed end as canceled (unbilled), as upstream.
            self.results[batch["id"]] = [orjson.dumps({
                "custom_id": orjson.loads(line)["custom_id"], "result": {"type": "canceled"}})
                for line in self.results[batch["id"]]]
            batch["cancel_initiated_at"] = _rfc3339(time.time())
            self._finish(batch)
        public = self._public(batch["id"])
        return web.json_response(public, headers=_headers())

    async def _delete(self, request: web.Request) -> web.Response:
        rec = await self.fake._record(request)
        rec.finished_at = time.monotonic()
        batch_id = request.match_info["id"]
        if batch_id not in self.objects:
            return _not_found(batch_id)
        del self.objects[batch_id]
        self.results.pop(batch_id, None)
        return web.json_response({"id": batch_id, "type": "message_batch_deleted"},
                                 headers=_headers())


def _not_found(batch_id: str) -> web.Response:
    return _error(404, "not_found_error", f"Message batch {batch_id!r} not found").response()


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
          500: "api_error", 529: "overloaded_error"}


def _headers() -> dict[str, str]:
    return {"request-id": make_id("req_011C"), "anthropic-organization-id":
            "00000000-0000-4000-8000-000000000000"}


def _error(status: int, error_type: str, message: str,
           headers: dict[str, str] | None = None, reply: Reply | None = None) -> Rendered:
    hdrs = headers or _headers()
    body = {"type": "error", "error": {"type": error_type, "message": message},
            "request_id": hdrs.get("request-id")}
    return Rendered(status, hdrs, body=orjson.dumps(body), reply=reply)


def error_event(reply: Reply) -> bytes:
    """The ``event: error`` a reply with ``error_after`` ends its stream with."""
    return encode_event("error", {"type": "error", "error": {
        "type": reply.error_event_type, "message": "Overloaded"}})


def build_message(request: dict[str, Any], reply: Reply, raw: bytes) -> dict[str, Any]:
    """The complete message a reply stands for."""
    content = []
    for block in reply.content:
        block = dict(block)
        if block.get("type") == "tool_use":
            block.setdefault("id", make_id("toolu_01"))
        if block.get("type") == "thinking":
            block.setdefault("signature", "sig_" + secrets.token_urlsafe(48))
        content.append(block)
    has_tool = any(b.get("type") == "tool_use" for b in content)
    usage = reply.usage or {
        "input_tokens": estimate_tokens(raw), "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": max(1, sum(len(orjson.dumps(b)) for b in content) // 4)}
    return {
        "id": make_id("msg_01"), "type": "message", "role": "assistant",
        "model": reply.model or request.get("model") or "claude-sonnet-4-6",
        "content": content,
        "stop_reason": reply.stop_reason or ("tool_use" if has_tool else "end_turn"),
        "stop_sequence": None, "usage": usage,
    }


def _split(text: str, parts: int) -> list[str]:
    if parts <= 1 or len(text) <= 1:
        return [text]
    size = max(1, -(-len(text) // parts))
    return [text[i:i + size] for i in range(0, len(text), size)]


def stream_events(message: dict[str, Any], reply: Reply) -> list[bytes]:
    """The SSE events Anthropic sends for ``message``, in order."""
    usage = dict(message["usage"])
    start_usage = {**usage, "output_tokens": 1}
    events = [encode_event("message_start", {"type": "message_start", "message": {
        **message, "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": start_usage}}), encode_event("ping", {"type": "ping"})]
    for index, block in enumerate(message["content"]):
        kind = block.get("type")
        if kind == "text":
            events.append(encode_event("content_block_start", {
                "type": "content_block_start", "index": index,
                "content_block": {"type": "text", "text": ""}}))
            for piece in _split(block["text"], reply.text_chunks):
                events.append(encode_event("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": piece}}))
        elif kind == "thinking":
            events.append(encode_event("content_block_start", {
                "type": "content_block_start", "index": index,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""}}))
            for piece in _split(block["thinking"], reply.text_chunks):
                events.append(encode_event("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "thinking_delta", "thinking": piece}}))
            events.append(encode_event("content_block_delta", {
                "type": "content_block_delta", "index": index,
                "delta": {"type": "signature_delta", "signature": block["signature"]}}))
        elif kind == "tool_use":
            events.append(encode_event("content_block_start", {
                "type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"],
                                  "input": {}}}))
            arguments = orjson.dumps(block.get("input", {})).decode()
            for piece in ["", *_split(arguments, reply.json_fragments)]:
                events.append(encode_event("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}))
        else:
            events.append(encode_event("content_block_start", {
                "type": "content_block_start", "index": index, "content_block": block}))
        events.append(encode_event("content_block_stop", {"type": "content_block_stop",
                                                          "index": index}))
    delta_usage = {k: v for k, v in usage.items() if k != "service_tier"}
    events.append(encode_event("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": message["stop_reason"],
                                           "stop_sequence": None},
        "usage": delta_usage}))
    events.append(encode_event("message_stop", {"type": "message_stop"}))
    return events


def run_forever(host: str, port: int) -> None:
    """Serve the fake API until interrupted (``midway mock-upstream``)."""
    web.run_app(FakeAnthropic().app, host=host, port=port, print=None, access_log=None)
