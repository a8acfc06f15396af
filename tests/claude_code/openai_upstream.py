"""A small OpenAI-compatible Chat Completions server, for routing Claude Code to another vendor.

It speaks the streaming wire format of ``/v1/chat/completions``: a role chunk, content deltas,
tool-call deltas (the first carries id and name, the arguments follow in fragments), a finish
chunk, a usage chunk with empty ``choices`` when ``stream_options.include_usage`` is set, and
``data: [DONE]``.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any

import attrs
import orjson
from aiohttp import web
from multidict import CIMultiDict

from midway.testing import ServerThread


@attrs.define
class ChatReply:
    """A text answer, or a call of ``tool`` with ``arguments`` (streamed in ``fragments``);
    with ``status`` >= 400, an error in OpenAI's format instead."""

    text: str | None = None
    tool: str | None = None
    arguments: dict[str, Any] = attrs.field(factory=dict)
    fragments: int = 4
    prompt_tokens: int = 900
    completion_tokens: int = 30
    status: int = 200
    error_type: str = "rate_limit_exceeded"
    error_message: str = "Rate limit reached for requests"
    headers: dict[str, str] = attrs.field(factory=dict)


@attrs.define
class ChatRequest:
    path: str
    headers: CIMultiDict[str]
    body: dict[str, Any]


class OpenAIUpstream(ServerThread):
    def __init__(self) -> None:
        self.replies: deque[ChatReply] = deque()
        self.requests: list[ChatRequest] = []
        self._ids = itertools.count(1)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._completions)
        super().__init__(app)

    def reply(self, *replies: ChatReply) -> None:
        self.replies.extend(replies)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(ChatRequest(request.path, CIMultiDict(request.headers), body))
        reply = self.replies.popleft() if self.replies else ChatReply(text="(no reply queued)")
        if reply.status >= 400:
            return web.json_response({"error": {"message": reply.error_message,
                                                "type": reply.error_type, "param": None,
                                                "code": reply.error_type}},
                                     status=reply.status, headers=reply.headers)
        chunks = self._chunks(body, reply)
        if not body.get("stream"):
            return web.json_response(self._completion(body, reply))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _completion(self, body: dict[str, Any], reply: ChatReply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.tool:
            message["tool_calls"] = [{"id": "call_1", "type": "function", "function": {
                "name": reply.tool, "arguments": orjson.dumps(reply.arguments).decode()}}]
        return {"id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion",
                "created": int(time.time()), "model": body.get("model", "gpt-fake"),
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if reply.tool else "stop"}],
                "usage": _usage(reply)}

    def _chunks(self, body: dict[str, Any], reply: ChatReply) -> list[dict[str, Any]]:
        ident = f"chatcmpl-{next(self._ids)}"
        head = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model", "gpt-fake")}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        chunks = [chunk({"role": "assistant", "content": ""})]
        if reply.text:
            step = max(1, len(reply.text) // 3)
            chunks += [chunk({"content": reply.text[i:i + step]})
                       for i in range(0, len(reply.text), step)]
        if reply.tool:
            chunks.append(chunk({"tool_calls": [{"index": 0, "id": f"call_{ident[-4:]}",
                                                 "type": "function", "function": {
                                                     "name": reply.tool, "arguments": ""}}]}))
            arguments = orjson.dumps(reply.arguments).decode()
            step = max(1, -(-len(arguments) // reply.fragments))
            chunks += [chunk({"tool_calls": [{"index": 0, "function": {
                "arguments": arguments[i:i + step]}}]}) for i in range(0, len(arguments), step)]
        chunks.append(chunk({}, "tool_calls" if reply.tool else "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**head, "choices": [], "usage": _usage(reply)})
        return chunks


def _usage(reply: ChatReply) -> dict[str, int]:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}
