"""The relay: bytes, headers, status codes and errors cross midway as they would directly."""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
import anthropic
import orjson
import pytest
from multidict import CIMultiDict

from midway import ErrorKind, Exchange
from midway.fake_upstream import encode_event
from midway.plugins import module_plugin
from midway.testing import Reply, free_port, wait_for

MSG = {"model": "claude-sonnet-4-6", "max_tokens": 32,
       "messages": [{"role": "user", "content": "hi"}]}


def post(url: str, body: bytes, headers: dict[str, str] | None = None,
         path: str = "/v1/messages") -> tuple[int, CIMultiDict[str], bytes]:
    async def go() -> tuple[int, CIMultiDict[str], bytes]:
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.post(
                url + path, data=body, headers=headers or {"x-api-key": "sk-ant-k1"}) as resp:
            return resp.status, CIMultiDict(resp.headers), await resp.read()
    return asyncio.run(go())


def capture() -> tuple[list[Exchange], object]:
    seen: list[Exchange] = []
    return seen, module_plugin("capture", post_response=lambda exchange: seen.append(exchange))


def test_request_body_and_headers_reach_upstream_unchanged(fake_upstream, midway_proxy):
    # Odd spacing, key order and escapes: a re-encoding proxy would change these bytes.
    body = b'{ "stream":false,"model" : "claude-sonnet-4-6", "max_tokens":5,' \
           b'"messages":[{"role":"user","content":"caf\\u00e9 {{7*7}} ${x} __import__"}]}'
    headers = {"x-api-key": "sk-ant-k1", "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
               "x-claude-code-session-id": "6f1c", "x-team": "platform",
               "content-type": "application/json", "connection": "keep-alive, x-hop",
               "x-hop": "must-not-pass"}
    status, _, _ = post(midway_proxy.url, body, headers, "/v1/messages?beta=true")
    assert status == 200
    seen = fake_upstream.messages_requests[-1]
    assert seen.body == body
    assert seen.query == "beta=true"
    for name in ("anthropic-version", "anthropic-beta", "x-claude-code-session-id", "x-team",
                 "x-api-key"):
        assert seen.headers[name] == headers[name]
    assert "x-hop" not in seen.headers


def test_json_answer_bytes_and_headers_come_back(fake_upstream, midway_proxy):
    raw = b'{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-6",' \
          b'"content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn",' \
          b'"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}'
    fake_upstream.reply(Reply(body=raw, headers={
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-tokens-reset": "2026-11-24T20:00:00Z"}))
    status, headers, body = post(midway_proxy.url, orjson.dumps(MSG))
    assert (status, body) == (200, raw)
    assert headers["anthropic-ratelimit-requests-remaining"] == "49"
    assert headers["anthropic-ratelimit-tokens-reset"] == "2026-11-24T20:00:00Z"
    assert headers["request-id"].startswith("req_")
    assert headers["x-midway-request-id"].startswith("mw_")


def test_upstream_error_bodies_pass_unmodified(fake_upstream, midway_proxy):
    raw = b'{"type":"error","error":{"type":"invalid_request_error",' \
          b'"message":"prompt is too long: 210000 tokens > 200000 maximum"}}'
    fake_upstream.reply(Reply(status=400, body=raw),
                        Reply(status=529, error_type="overloaded_error",
                              error_message="Overloaded"),
                        Reply(status=429, headers={"retry-after": "7"}))
    status, headers, body = post(midway_proxy.url, orjson.dumps(MSG))
    assert (status, body) == (400, raw)
    assert "x-should-retry" not in headers
    status, _, body = post(midway_proxy.url, orjson.dumps(MSG))
    assert status == 529 and orjson.loads(body)["error"]["type"] == "overloaded_error"
    status, headers, _ = post(midway_proxy.url, orjson.dumps(MSG))
    assert status == 429 and headers["retry-after"] == "7"


def test_stream_bytes_identical_under_one_byte_writes(fake_upstream, midway_factory):
    seen, plugin = capture()
    proxy = midway_factory(plugins=[plugin])
    # Multi-byte characters are cut in half by 1-byte writes.
    events = [
        encode_event("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "model": "claude-sonnet-4-6", "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 12, "cache_creation_input_tokens": 4,
                      "cache_read_input_tokens": 8, "output_tokens": 1}}}),
        encode_event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
        encode_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta",
                                                       "text": "héllo — 世界 🎉"}}),
        b"event: future_event\ndata: {\"type\":\"future_event\"}\n\n",
        encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        encode_event("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": "end_turn",
                                                 "stop_sequence": None},
                                       "usage": {"output_tokens": 7}}),
        encode_event("message_delta", {"type": "message_delta", "delta": {},
                                       "usage": {"output_tokens": 9}}),
        encode_event("message_stop", {"type": "message_stop"}),
    ]
    fake_upstream.reply(Reply(events=events, chunk_size=1, stream=True))
    status, headers, body = post(proxy.url, orjson.dumps({**MSG, "stream": True}))
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert body == b"".join(events)
    wait_for(lambda: len(seen) == 1)
    usage = seen[0].usage
    # Cumulative: the last message_delta wins, message_start fills the rest; never a sum.
    assert (usage.input_tokens, usage.output_tokens) == (12, 9)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (4, 8)
    assert seen[0].stop_reason == "end_turn"
    assert seen[0].streaming


def test_sdk_sync_and_async_through_midway_match_direct(fake_upstream, midway_proxy):
    reply = Reply(content=[{"type": "thinking", "thinking": "Let me think…",
                            "signature": "EqQBsig=="},
                           {"type": "text", "text": "I'll run it."},
                           {"type": "tool_use", "id": "toolu_01A", "name": "Bash",
                            "input": {"command": "echo hi", "description": "say hi"}}],
                  usage={"input_tokens": 20, "output_tokens": 30}, json_fragments=5)
    kwargs = {"model": "claude-sonnet-4-6", "max_tokens": 64,
              "messages": [{"role": "user", "content": "run echo"}],
              "thinking": {"type": "enabled", "budget_tokens": 1024},
              "tools": [{"name": "Bash", "input_schema": {"type": "object"}}]}

    def run_sync(base: str) -> list[object]:
        client = anthropic.Anthropic(base_url=base, api_key="sk-ant-k1", max_retries=0)
        fake_upstream.reply(reply, reply)
        plain = client.messages.create(**kwargs)
        with client.messages.stream(**kwargs) as stream:
            streamed = stream.get_final_message()
        return [_strip(plain), _strip(streamed)]

    async def run_async(base: str) -> list[object]:
        client = anthropic.AsyncAnthropic(base_url=base, api_key="sk-ant-k1", max_retries=0)
        fake_upstream.reply(reply, reply)
        plain = await client.messages.create(**kwargs)
        async with client.messages.stream(**kwargs) as stream:
            streamed = await stream.get_final_message()
        return [_strip(plain), _strip(streamed)]

    direct = run_sync(fake_upstream.url)
    assert run_sync(midway_proxy.url) == direct
    assert asyncio.run(run_async(midway_proxy.url)) == direct
    assert direct[0] == direct[1]
    blocks = direct[0]["content"]
    assert blocks[0]["signature"] == "EqQBsig=="
    assert blocks[2]["input"] == {"command": "echo hi", "description": "say hi"}


def _strip(message: anthropic.types.Message) -> dict[str, object]:
    data = message.model_dump()
    data.pop("id")
    return data


def test_count_tokens_models_head_and_healthz(fake_upstream, midway_proxy):
    status, _, body = post(midway_proxy.url, orjson.dumps(MSG),
                           path="/v1/messages/count_tokens?beta=true")
    assert status == 200 and orjson.loads(body)["input_tokens"] > 0

    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.get(midway_proxy.url + "/v1/models?limit=1000",
                             headers={"x-api-key": "k"}) as r:
                assert r.status == 200
                assert len((await r.json())["data"]) == 3
            async with s.head(midway_proxy.url + "/") as r:
                assert r.status == 200
            async with s.get(midway_proxy.url + "/healthz") as r:
                assert (await r.json())["status"] == "ok"
            async with s.get(midway_proxy.url + "/nope") as r:
                assert r.status == 404
                assert (await r.json())["error"]["type"] == "not_found_error"
    asyncio.run(go())
    assert [r.path for r in fake_upstream.requests] == ["/v1/messages/count_tokens", "/v1/models"]
    assert fake_upstream.requests[-1].query == "limit=1000"


def test_oversized_body_is_413_without_upstream_contact(fake_upstream, midway_factory):
    proxy = midway_factory(max_body_size=1024)
    status, _, body = post(proxy.url, b"x" * 4096)
    assert status == 413
    assert orjson.loads(body)["error"]["type"] == "request_too_large"
    bomb = gzip.compress(b"{" + b" " * (10 * 1024 * 1024) + b"}")
    status, _, body = post(proxy.url, bomb, {"x-api-key": "k", "content-encoding": "gzip"})
    assert status == 413
    assert fake_upstream.requests == []


def test_gzip_request_body_is_decoded_for_upstream(fake_upstream, midway_proxy):
    raw = orjson.dumps(MSG)
    status, _, _ = post(midway_proxy.url, gzip.compress(raw),
                        {"x-api-key": "k", "content-encoding": "gzip"})
    assert status == 200
    assert fake_upstream.messages_requests[-1].body == raw
    assert "content-encoding" not in fake_upstream.messages_requests[-1].headers


def test_an_upstream_url_the_lean_client_does_not_take_goes_through_aiohttps(
        fake_upstream, midway_factory):
    # Credentials in the URL: the lean client refuses it at the call, aiohttp's sends it
    # (with the credentials as basic authentication).
    url = fake_upstream.url.replace("http://", "http://user:pw@")
    proxy = midway_factory(upstream=url)
    status, _, body = post(proxy.url, orjson.dumps(MSG))
    assert status == 200, body
    assert orjson.loads(body)["type"] == "message"
    assert fake_upstream.messages_requests[-1].headers["authorization"] == "Basic dXNlcjpwdw=="


def test_unreachable_upstream_is_502_api_error(midway_factory):
    port = free_port()
    seen, plugin = capture()
    proxy = midway_factory(upstream=f"http://127.0.0.1:{port}", plugins=[plugin])
    status, headers, body = post(proxy.url, orjson.dumps(MSG))
    assert status == 502
    assert orjson.loads(body)["error"]["type"] == "api_error"
    assert "x-should-retry" not in headers
    wait_for(lambda: len(seen) == 1)
    assert seen[0].error_kind is ErrorKind.UPSTREAM_UNREACHABLE
    assert seen[0].attempts[0].error_kind is ErrorKind.UPSTREAM_UNREACHABLE
    assert not seen[0].complete


def test_mid_stream_failures_end_with_error_event(fake_upstream, midway_factory):
    seen, plugin = capture()
    proxy = midway_factory(plugins=[plugin], idle_timeout=0.5)
    stream_body = orjson.dumps({**MSG, "stream": True})
    fake_upstream.reply(Reply(reset_after=3))
    _, _, body = post(proxy.url, stream_body)
    assert body.count(b"event: message_start") == 1
    assert body.endswith(b"\n\n") and b"event: error" in body
    assert b"message_stop" not in body
    # Pings only, for longer than the idle timeout: cut by idleness, never by total length.
    fake_upstream.reply(Reply(stall=3.0, ping_interval=1.0))
    _, _, body = post(proxy.url, stream_body)
    assert b"event: error" in body and b"timed out" in body
    # Pings more often than the idle timeout keep a long stream alive.
    fake_upstream.reply(Reply(stall=1.5, ping_interval=0.2))
    _, _, body = post(proxy.url, stream_body)
    assert b"message_stop" in body and b"event: error" not in body
    wait_for(lambda: len(seen) == 3)
    assert [e.error is not None for e in seen] == [True, True, False]
    assert [e.error_kind for e in seen] == [ErrorKind.STREAM_BROKEN, ErrorKind.STREAM_TIMEOUT,
                                            None]
    assert [e.complete for e in seen] == [False, False, True]


def test_client_disconnect_cancels_upstream(fake_upstream, midway_factory):
    seen, plugin = capture()
    proxy = midway_factory(plugins=[plugin])
    fake_upstream.reply(Reply(delay=0.2, text_chunks=50))

    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            resp = await s.post(proxy.url + "/v1/messages", data=orjson.dumps(
                {**MSG, "stream": True}), headers={"x-api-key": "k"})
            await resp.content.readuntil(b"content_block_delta")
            resp.close()  # drop the connection mid-stream
    asyncio.run(go())
    wait_for(lambda: fake_upstream.messages_requests
             and fake_upstream.messages_requests[0].finished_at is not None, timeout=5)
    rec = fake_upstream.messages_requests[0]
    assert rec.cancelled
    wait_for(lambda: len(seen) == 1)
    assert seen[0].client_disconnected
    assert len(seen) == 1


@pytest.mark.parametrize("chunked", [False, True])
def test_on_chunk_sees_every_event_and_may_replace(fake_upstream, midway_factory, chunked):
    names: list[str | None] = []

    def on_chunk(event):
        names.append(event.name)
        if event.name == "ping":
            from midway import SSEEvent
            return SSEEvent.dropped()
        return None

    watch = module_plugin("watch", on_chunk=on_chunk,
                          pre_request=lambda exchange: exchange.observe_stream(watch))
    proxy = midway_factory(plugins=[watch])
    fake_upstream.reply(Reply(chunk_size=3 if chunked else None))
    _, _, body = post(proxy.url, orjson.dumps({**MSG, "stream": True}))
    assert b"event: ping" not in body
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "ping" in names and "content_block_delta" in names


def test_on_chunk_raising_midway_error_ends_the_stream_with_its_error(fake_upstream,
                                                                      midway_factory):
    from midway import MidwayError

    seen: list[Exchange] = []

    def on_chunk(event):
        if event.name == "content_block_delta":
            raise MidwayError(429, "the budget ran out", "rate_limit_error")

    def post_response(exchange):
        seen.append(exchange)

    stopper = module_plugin("stopper", on_chunk=on_chunk, post_response=post_response,
                            pre_request=lambda exchange: exchange.observe_stream(stopper))
    proxy = midway_factory(plugins=[stopper])
    _, _, body = post(proxy.url, orjson.dumps({**MSG, "stream": True}))
    # What came before stays; the event that raised and everything after it do not.
    assert b"event: content_block_start" in body and b"content_block_delta" not in body
    assert b"message_stop" not in body
    assert body.rstrip().endswith(b'"message":"the budget ran out"}}'), body[-200:]
    assert b"event: error" in body and b'"type":"rate_limit_error"' in body
    wait_for(lambda: len(seen) == 1)
    assert seen[0].error_kind is ErrorKind.REFUSED and seen[0].error_type == "rate_limit_error"


@pytest.mark.parametrize("chunked", [False, True])
def test_a_usage_observer_sees_usage_events_and_the_text_past_its_mark(
        fake_upstream, midway_factory, chunked):
    """observe_stream(usage_only=True): on_chunk sees the usage and outcome events, and only
    the deltas that take streamed_text past the mark; every byte still reaches the client."""
    seen: list[tuple[str | None, int]] = []
    ended: list[Exchange] = []

    def pre_request(exchange):
        exchange.observe_stream(meter, usage_only=True)

    def on_chunk(exchange, event):
        seen.append((event.name, exchange.streamed_text))
        if event.name == "message_start":
            exchange.streamed_text_mark = 10

    meter = module_plugin("meter", on_chunk=on_chunk, pre_request=pre_request,
                          post_response=lambda exchange: ended.append(exchange))
    proxy = midway_factory(plugins=[meter])
    text = "Hello there, " * 4  # 52 characters in 4 deltas of 13
    fake_upstream.reply(Reply(content=[{"type": "text", "text": "naïve 🎉 \"q\"\n"},
                                       {"type": "text", "text": text}],
                              text_chunks=4, chunk_size=7 if chunked else None))
    _, _, body = post(proxy.url, orjson.dumps({**MSG, "stream": True}))
    direct_events = [e for e in body.split(b"\n\n") if e]
    assert b"event: message_stop" in direct_events[-1]
    names = [name for name, _ in seen]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "ping" not in names and "content_block_start" not in names
    deltas = [count for name, count in seen if name == "content_block_delta"]
    assert deltas and all(count > 10 for count in deltas)
    wait_for(lambda: len(ended) == 1)
    assert ended[0].streamed_text == len("naïve 🎉 \"q\"\n") + len(text)
    assert ended[0].usage.output_tokens > 0 and ended[0].complete


def test_a_usage_observer_beside_one_that_sees_every_event(fake_upstream, midway_factory):
    names: list[str | None] = []
    every: list[str | None] = []
    meter = module_plugin("meter", on_chunk=lambda event: names.append(event.name),
                          pre_request=lambda exchange: exchange.observe_stream(
                              meter, usage_only=True))
    watch = module_plugin("watch", on_chunk=lambda event: every.append(event.name),
                          pre_request=lambda exchange: exchange.observe_stream(watch))
    proxy = midway_factory(plugins=[meter, watch])
    status, _, _ = post(proxy.url, orjson.dumps({**MSG, "stream": True}))
    assert status == 200
    assert "content_block_delta" in every and "ping" in every
    assert names == [n for n in every if n in ("message_start", "message_delta",
                                               "message_stop", "error")]
