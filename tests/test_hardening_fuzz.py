"""Hypothesis against the whole stack (audit, billing, cache, router): random methods, paths,
headers and bodies, sent in random pieces, never get a 5xx or crash the relay; streams cut at
random points with junk events in between never mis-attribute usage."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from midway import Exchange
from midway.plugins import module_plugin
from midway.sse import encode_event
from midway.testing import FakeUpstream, Reply, RunningMidway, start_midway, wait_for

FIELDS = ["model", "messages", "stream", "max_tokens", "tools", "thinking", "system",
          "metadata", "content", "role", "type", "text", "cache_control", "tool_choice",
          "input_schema", "name", "budget_tokens", "temperature", "stop_sequences", "source"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                    st.floats(allow_nan=False), st.text(max_size=30),
                    st.sampled_from(["claude-sonnet-4-6", "user", "assistant", "text",
                                     "image", "enabled", "ephemeral", "auto", ""]))
json_values = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), children, max_size=5)),
    max_leaves=25)
bodies = st.one_of(
    st.binary(max_size=2000),
    json_values.map(orjson.dumps),
    st.fixed_dictionaries({"model": scalars, "max_tokens": scalars, "messages": json_values},
                          optional={"stream": scalars, "tools": json_values,
                                    "thinking": json_values, "system": json_values,
                                    "metadata": json_values}).map(orjson.dumps),
)
token = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_"), min_size=1,
                max_size=20)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60)
known_headers = st.tuples(st.sampled_from([
    "content-type", "anthropic-beta", "anthropic-version", "x-api-key", "authorization",
    "content-encoding", "accept-encoding", "x-claude-code-session-id", "x-midway-project",
    "expect", "x-forwarded-host", "cookie"]), header_values | st.sampled_from(
    ["gzip", "deflate", "br", "zstd", "identity", "application/json", "100-continue"]))
headers = st.lists(st.tuples(token, header_values) | known_headers, max_size=12)
paths = st.sampled_from(["/v1/messages", "/v1/messages?beta=true", "/v1/messages/count_tokens",
                         "/v1/models?limit=1000", "/v1/", "/v1/messages/batches", "/v1/%00",
                         "/v1/messages/../../etc/passwd", "/v1/x?" + "a=1&" * 200, "/"])
# CI runs a few hundred examples; ``nox -s soak`` sets HARDENING_FUZZ_EXAMPLES much higher.
EXAMPLES = int(os.environ.get("HARDENING_FUZZ_EXAMPLES", "300"))
NONCE = itertools.count()  # distinct prompts: the cache must not answer from an earlier example
methods = st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS",
                           "HEAD"])


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.fake = FakeUpstream()
        self.fake.start()
        self.seen: list[Exchange] = []
        capture = module_plugin("capture", post_response=lambda exchange:
                                self.seen.append(exchange))
        config: dict[str, Any] = {
            "midway": {"plugins": ["audit", "billing", "cache", "router"]},
            "audit": {"sqlite_synchronous": "normal"},
            "router": {"upstreams": [{"name": "anthropic", "url": self.fake.url}]}}
        self.running: RunningMidway = start_midway(tmp, self.fake.url, plugins=[capture],
                                                   config=config)

    def stop(self) -> None:
        self.running.stop()
        self.fake.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("fuzz"))
    yield s
    s.stop()


def exchange_raw(port: int, data: bytes, cuts: list[int]) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = 0
        try:
            for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
                if cut > start:
                    sock.sendall(data[start:cut])
                    start = cut
        except (BrokenPipeError, ConnectionResetError):
            pass  # midway answered (and closed) before reading all of it: read the answer
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass  # unread bytes make the kernel reset the connection after the answer
    return b"".join(chunks)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=methods, path=paths, hdrs=headers, body=bodies,
       cuts=st.lists(st.integers(0, 5000), max_size=6))
def test_random_requests_never_get_a_5xx(stack: Stack, method: str, path: str,
                                         hdrs: list[tuple[str, str]], body: bytes,
                                         cuts: list[int]) -> None:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
            f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in hdrs if k.lower() not in (
        "content-length", "transfer-encoding", "connection", "host")]
    data = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    answer = exchange_raw(stack.running.port, data, cuts)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), answer[:200]
    status = int(status_line.split()[1])
    assert status < 500, answer[:500]


def stream_events(input_tokens: int, output_tokens: int, junk: list[bytes]) -> list[bytes]:
    events = [encode_event("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [],
        "model": "claude-sonnet-4-6", "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 3,
                  "cache_read_input_tokens": 2, "output_tokens": 1}}}),
        encode_event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
        encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta",
                                                       "text": "héllo 世界 🎉"}})]
    events += junk
    events += [encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
               encode_event("message_delta", {"type": "message_delta",
                                              "delta": {"stop_reason": "end_turn",
                                                        "stop_sequence": None},
                                              "usage": {"output_tokens": output_tokens}}),
               encode_event("message_stop", {"type": "message_stop"})]
    return events


junk_events = st.lists(st.sampled_from([
    b": keep-alive comment\n\n", encode_event("ping", {"type": "ping"}),
    b"event: future_event\ndata: {\"type\":\"future_event\",\"usage\":{\"output_tokens\":999}}"
    b"\n\n", b"event: content_block_delta\ndata: {broken json\n\n", b"data: [1,2]\n\n",
    b"event: message_delta\r\ndata: {\"type\":\"ping\"}\r\n\r\n", b"retry: 10\n\n"]), max_size=5)


@settings(max_examples=EXAMPLES // 4, deadline=None, suppress_health_check=list(HealthCheck))
@given(input_tokens=st.integers(1, 10**7), output_tokens=st.integers(1, 10**6),
       chunk=st.integers(1, 64), junk=junk_events)
def test_usage_survives_any_split_and_junk(stack: Stack, input_tokens: int, output_tokens: int,
                                           chunk: int, junk: list[bytes]) -> None:
    events = stream_events(input_tokens, output_tokens, junk)
    stack.fake.reply(Reply(events=events, stream=True, chunk_size=chunk))
    before = len(stack.seen)
    body = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 5, "stream": True,
                         "messages": [{"role": "user", "content": f"fuzz {next(NONCE)}"}]})

    async def send() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as s, s.post(
                stack.running.url + "/v1/messages", data=body,
                headers={"x-api-key": "sk-ant-fuzz"}) as r:
            return r.status, await r.read()
    status, answer = asyncio.run(send())
    assert status == 200
    wait_for(lambda: len(stack.seen) > before)
    usage = stack.seen[-1].usage
    assert (usage.input_tokens, usage.output_tokens) == (input_tokens, output_tokens)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (3, 2)
    # The relayed bytes are the upstream's bytes, whatever the split.
    assert answer == b"".join(events)
