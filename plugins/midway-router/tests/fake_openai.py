"""A fake OpenAI-compatible Chat Completions server speaking the real wire format.

Non-streaming answers are ``chat.completion`` objects; streaming answers are
``chat.completion.chunk`` SSE events (a role chunk, content deltas, tool-call deltas whose first
fragment carries id and name, a finish chunk, a usage chunk with empty ``choices`` when
``stream_options.include_usage`` is set) and ``data: [DONE]``. The official ``openai`` SDK must
parse all of it (see test_translate_fake_openai.py).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from typing import Any

import attrs
import orjson
from aiohttp import web
from multidict import CIMultiDict

from midway.testing import ServerThread


@attrs.define
class ToolCall:
    name: str
    arguments: str
    id: str | None = None


@attrs.define
class OpenAIReply:
    """One scripted answer; the stream follows the request's ``stream`` flag."""

    content: str | None = "Hello from the fake OpenAI upstream."
    tool_calls: list[ToolCall] = attrs.field(factory=list)
    finish_reason: str | None = None  # default: tool_calls when there are calls, else stop
    refusal: str | None = None
    prompt_tokens: int = 25
    cached_tokens: int = 0
    completion_tokens: int = 12
    model: str = "gpt-fake-1"
    status: int = 200
    error: dict[str, Any] | None = None  # the "error" object of an error answer
    text_chunks: int = 3
    arg_fragments: int = 3
    interleave: bool = False  # round-robin the argument fragments of parallel calls
    choice_extra: dict[str, Any] = attrs.field(factory=dict)  # e.g. vLLM's stop_reason
    error_after: int | None = None  # a mid-stream error chunk after this many chunks
    truncate_after: int | None = None  # end the body after this many chunks, no [DONE]
    chunk_size: int | None = None  # write the stream in pieces of this many bytes
    # Stall after this many events until ``resume`` is set (a vendor thinking in silence).
    stall_after: int | None = None
    resume: threading.Event = attrs.field(factory=threading.Event)


@attrs.define
class Recorded:
    path: str
    headers: CIMultiDict[str]
    body: dict[str, Any]


class FakeOpenAI:
    def __init__(self) -> None:
        self.replies: deque[OpenAIReply] = deque()
        self.requests: list[Recorded] = []
        self._ids = itertools.count(1)
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self._completions)

    def reply(self, *replies: OpenAIReply) -> None:
        self.replies.extend(replies)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(Recorded(request.path, CIMultiDict(request.headers), body))
        reply = self.replies.popleft() if self.replies else OpenAIReply()
        if reply.status >= 400:
            error = reply.error or {"message": "error", "type": "server_error", "param": None,
                                    "code": None}
            return web.json_response({"error": error}, status=reply.status)
        n = next(self._ids)
        calls = [attrs.evolve(c, id=c.id or f"call_{n}x{i}") for i, c in
                 enumerate(reply.tool_calls)]
        if body.get("stream"):
            return await self._stream(request, body, reply, calls, n)
        return web.json_response(completion(reply, calls, n), headers=_headers(n))

    async def _stream(self, request: web.Request, body: dict[str, Any], reply: OpenAIReply,
                      calls: list[ToolCall], n: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8",
                                               **_headers(n)})
        await response.prepare(request)
        options = body.get("stream_options") or {}
        chunks = stream_chunks(reply, calls, n, bool(options.get("include_usage")))
        events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks]
        if reply.error_after is not None:
            events = events[:reply.error_after]
            events.append(b"data: " + orjson.dumps(
                {"error": {"message": "The server had an error while processing your request.",
                           "type": "server_error", "param": None, "code": None}}) + b"\n\n")
        elif reply.truncate_after is not None:
            events = events[:reply.truncate_after]
        else:
            events.append(b"data: [DONE]\n\n")
        if reply.stall_after is not None:
            await response.write(b"".join(events[:reply.stall_after]))
            # bounded: a failed test must not leave the server thread waiting forever
            await asyncio.get_running_loop().run_in_executor(None, reply.resume.wait, 30)
            events = events[reply.stall_after:]
        data = b"".join(events)
        step = reply.chunk_size or len(data) or 1
        for start in range(0, len(data), step):
            await response.write(data[start:start + step])
            if reply.chunk_size:
                await asyncio.sleep(0)
        await response.write_eof()
        return response


def _headers(n: int) -> dict[str, str]:
    return {"x-request-id": f"req_fake{n}", "openai-processing-ms": "12"}


def _usage(reply: OpenAIReply) -> dict[str, Any]:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _finish(reply: OpenAIReply, calls: list[ToolCall]) -> str:
    return reply.finish_reason or ("tool_calls" if calls else "stop")


def completion(reply: OpenAIReply, calls: list[ToolCall], n: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content,
                               "refusal": reply.refusal, "annotations": []}
    if calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in calls]
    choice = {"index": 0, "message": message, "logprobs": None,
              "finish_reason": _finish(reply, calls), **reply.choice_extra}
    return {"id": f"chatcmpl-fake{n}", "object": "chat.completion", "created": int(time.time()),
            "model": reply.model, "choices": [choice], "usage": _usage(reply),
            "service_tier": "default", "system_fingerprint": "fp_fake"}


def split(text: str, parts: int) -> list[str]:
    if parts <= 1 or len(text) <= 1:
        return [text]
    size = max(1, -(-len(text) // parts))
    return [text[i:i + size] for i in range(0, len(text), size)]


def stream_chunks(reply: OpenAIReply, calls: list[ToolCall], n: int,
                  include_usage: bool) -> list[dict[str, Any]]:
    base = {"id": f"chatcmpl-fake{n}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": reply.model,
            "system_fingerprint": "fp_fake", "service_tier": "default"}

    def chunk(delta: dict[str, Any], finish: str | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
        out = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": finish, **(extra or {})}]}
        if include_usage:
            out["usage"] = None
        return out

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if reply.content:
        chunks += [chunk({"content": piece}) for piece in split(reply.content, reply.text_chunks)]
    if reply.refusal:
        chunks.append(chunk({"refusal": reply.refusal}))
    firsts = [chunk({"tool_calls": [{"index": i, "id": c.id, "type": "function",
                                     "function": {"name": c.name, "arguments": ""}}]})
              for i, c in enumerate(calls)]
    fragments = [[chunk({"tool_calls": [{"index": i, "function": {"arguments": frag}}]})
                  for frag in split(c.arguments, reply.arg_fragments) if frag]
                 for i, c in enumerate(calls)]
    if reply.interleave:
        chunks += firsts
        for row in itertools.zip_longest(*fragments):
            chunks += [c for c in row if c is not None]
    else:
        for first, frags in zip(firsts, fragments, strict=True):
            chunks += [first, *frags]
    chunks.append(chunk({}, _finish(reply, calls), reply.choice_extra))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _usage(reply)})
    return chunks


class FakeOpenAIServer(ServerThread):
    def __init__(self) -> None:
        self.fake = FakeOpenAI()
        super().__init__(self.fake.app)

    def reply(self, *replies: OpenAIReply) -> None:
        self.fake.reply(*replies)

    @property
    def requests(self) -> list[Recorded]:
        return self.fake.requests
