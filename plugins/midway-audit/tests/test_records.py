"""One record per request, whatever happened, with the reassembled answer."""

from __future__ import annotations

import asyncio

import aiohttp
import anthropic
import orjson
import pytest
from conftest import abandon_stream, get, records

from midway import MidwayError, Response, hookimpl
from midway.testing import Reply, wait_for

MESSAGES = [{"role": "user", "content": "hi"}]


def client(running) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0)


def test_json_request_is_recorded_with_bodies_and_ids(fake_upstream, audited):
    running = audited()
    msg = client(running).messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=10, messages=MESSAGES)
    midway_id = msg.headers["x-midway-request-id"]
    upstream_id = msg.headers["request-id"]
    wait_for(lambda: get(running, midway_id) is not None)
    record = get(running, midway_id)
    assert record["upstream_request_id"] == upstream_id
    assert record["status"] == 200
    assert record["model"] == "claude-sonnet-4-6"
    assert record["method"] == "POST" and record["path"] == "/v1/messages"
    assert record["stop_reason"] == "end_turn"
    assert record["usage"]["output_tokens"] > 0
    assert record["ttfb_ms"] > 0 and record["total_ms"] >= record["ttfb_ms"]
    assert record["client_address"] == "127.0.0.1"
    assert record["principal"].startswith("key-")
    assert record["upstream"] == "default"
    assert orjson.loads(record["request_body"])["messages"] == MESSAGES
    response = orjson.loads(record["response_body"])
    assert response["content"][0]["text"] == "Hello from the fake upstream."
    assert record["request_headers"]["anthropic-version"]
    assert "x-api-key" not in record["request_headers"]
    assert "authorization" not in record["request_headers"]


def test_stream_is_reassembled_in_block_order(fake_upstream, audited):
    running = audited()
    fake_upstream.reply(Reply(content=[
        {"type": "thinking", "thinking": "Let me think about this.", "signature": "sig-abc"},
        {"type": "text", "text": "I will list the files now."},
        {"type": "tool_use", "name": "Bash", "input": {"command": "ls -la", "n": [1, 2]}},
    ], chunk_size=7, text_chunks=5, json_fragments=4))
    with client(running).messages.stream(model="claude-opus-4-8", max_tokens=10,
                                         messages=MESSAGES) as stream:
        final = stream.get_final_message()
        midway_id = stream.response.headers["x-midway-request-id"]
    wait_for(lambda: get(running, midway_id) is not None)
    record = get(running, midway_id)
    assert record["streaming"] is True
    assert record["stop_reason"] == "tool_use"
    message = orjson.loads(record["response_body"])
    assert [b["type"] for b in message["content"]] == ["thinking", "text", "tool_use"]
    thinking, text, tool = message["content"]
    assert thinking["thinking"] == "Let me think about this."
    assert thinking["signature"] == "sig-abc"
    assert text["text"] == "I will list the files now."
    assert tool["input"] == {"command": "ls -la", "n": [1, 2]}
    assert tool["id"] == final.content[2].id
    assert message["id"] == final.id
    assert message["stop_reason"] == "tool_use"
    assert "incomplete" not in message
    assert message["usage"]["output_tokens"] == final.usage.output_tokens


def test_plugin_answers_and_failures_are_recorded(fake_upstream, audited):
    class Answering:
        """Stands in for the cache (a hit) and billing (a refusal, a cost)."""

        @hookimpl(tryfirst=True)
        def pre_request(self, exchange):
            body = exchange.request.json
            if body["messages"][0]["content"] == "cached":
                exchange.annotations["cache"] = "hit"
                return Response(body={"type": "message", "id": "msg_cached", "role":
                                      "assistant", "model": "claude-sonnet-4-6",
                                      "content": [{"type": "text", "text": "from cache"}],
                                      "stop_reason": "end_turn", "usage":
                                      {"input_tokens": 0, "output_tokens": 0}})
            if body["messages"][0]["content"] == "broke":
                raise MidwayError(429, "budget exhausted for team search")
            return None

        @hookimpl(tryfirst=True)
        def post_response(self, exchange):
            exchange.annotations["cost_usd"] = "0.0012"

    running = audited(extra_plugins=[("answering", Answering())])
    c = client(running)
    hit = c.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=5,
        messages=[{"role": "user", "content": "cached"}])
    with pytest.raises(anthropic.RateLimitError) as refused:
        c.messages.create(model="claude-sonnet-4-6", max_tokens=5,
                          messages=[{"role": "user", "content": "broke"}])
    fake_upstream.reply(Reply(status=529, error_type="overloaded_error"))
    with pytest.raises(anthropic.InternalServerError):
        c.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES)
    wait_for(lambda: len(records(running)) == 3)
    by_id = {r["id"]: r for r in records(running)}
    cached = by_id[hit.headers["x-midway-request-id"]]
    assert cached["answered_by"] == "answering"
    assert cached["cache"] == "hit"
    assert cached["upstream"] is None
    assert orjson.loads(get(running, cached["id"])["response_body"])["id"] == "msg_cached"
    refusal = by_id[refused.value.response.headers["x-midway-request-id"]]
    assert refusal["status"] == 429
    assert refusal["error_type"] == "rate_limit_error"
    assert refusal["error"] == "budget exhausted for team search"
    failed = next(r for r in by_id.values() if r["status"] == 529)
    assert failed["upstream_request_id"]
    assert failed["error_type"] == "overloaded_error"
    # audit's post_response runs last: it sees what billing's (tryfirst) one annotated
    assert {r["cost_usd"] for r in by_id.values()} == {"0.0012"}


def test_disconnected_stream_is_recorded_as_incomplete(fake_upstream, audited):
    running = audited()
    fake_upstream.reply(Reply(content=[{"type": "text", "text": "a b c d e f g h i j"}],
                              text_chunks=10, delay=0.05))
    async def go() -> str:
        async with aiohttp.ClientSession() as session:
            return await abandon_stream(session, running.url, {
                "model": "claude-sonnet-4-6", "max_tokens": 5, "stream": True,
                "messages": MESSAGES})

    midway_id = asyncio.run(go())
    wait_for(lambda: get(running, midway_id) is not None)
    record = get(running, midway_id)
    assert record["client_disconnected"] is True
    assert record["status"] == 200  # the status that went out before the client left
    message = orjson.loads(record["response_body"])
    assert message["incomplete"] is True
    assert message["content"][0]["text"].startswith("a")


def test_bodies_off_and_truncation(fake_upstream, audited):
    running = audited(bodies=False)
    client(running).messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES)
    wait_for(lambda: len(records(running)) == 1)
    record = get(running, records(running)[0]["id"])
    assert record["request_body"] is None and record["response_body"] is None
    assert record["bodies"] is False
    assert record["model"] == "claude-sonnet-4-6"  # read from the body all the same

    capped = audited(max_body_bytes=200)
    long_text = "x" * 5000
    fake_upstream.reply(Reply(content=[{"type": "text", "text": long_text}]))
    with client(capped).messages.stream(model="claude-sonnet-4-6", max_tokens=5,
                                        messages=[{"role": "user", "content": long_text}]) as s:
        s.get_final_message()
    wait_for(lambda: len(records(capped)) == 1)
    record = get(capped, records(capped)[0]["id"])
    assert record["request_truncated"] is True and record["response_truncated"] is True
    assert "…[midway-audit: truncated" in record["request_body"]
    assert len(record["request_body"].encode()) < 300
    assert len(record["response_body"].encode()) < 300


def test_answer_over_the_relay_buffer_is_recorded_cut(fake_upstream, audited, monkeypatch):
    """A JSON answer too large for the relay to buffer is relayed through; the record holds
    its start, marked truncated, and its usage (#18 items 4, 5)."""
    from midway import proxy

    monkeypatch.setattr(proxy, "BUFFER_LIMIT", 64 * 1024)
    running = audited()
    fake_upstream.reply(Reply(content=[{"type": "text", "text": "y" * (256 * 1024)}],
                              usage={"input_tokens": 9, "output_tokens": 4}))
    msg = client(running).messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=10, messages=MESSAGES)
    assert msg.parse().content[0].text == "y" * (256 * 1024)
    midway_id = msg.headers["x-midway-request-id"]
    wait_for(lambda: get(running, midway_id) is not None)
    record = get(running, midway_id)
    assert record["response_truncated"] is True and record["error"] is None
    assert record["usage"]["output_tokens"] == 4
    assert record["response_body"].startswith('{"id":"msg_')
    assert len(record["response_body"]) <= 64 * 1024


def test_an_unserialisable_record_is_still_written_plainly(fake_upstream, audited):
    class Odd:
        @hookimpl(tryfirst=True)
        def post_response(self, exchange):
            exchange.annotations["odd"] = {1: object()}  # orjson cannot encode int keys
            exchange.request.headers["x-odd"] = "caf\udce9"  # not UTF-8 (surrogateescape)

    running = audited(extra_plugins=[("odd", Odd())], batch_size=8)
    c = client(running)
    for _ in range(3):
        c.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES)
    wait_for(lambda: len(records(running)) == 3)
    record = get(running, records(running)[0]["id"])
    assert record["audit_problem"].startswith("prepared without annotations")
    assert record["annotations"] == {}
    assert record["request_headers"]["x-odd"] == "caf\ufffd"
    assert orjson.loads(record["request_body"])["messages"] == MESSAGES
    assert running.call(running.midway.services["audit"].verify())["ok"]


def test_claude_code_subagent_ids_are_recorded(fake_upstream, audited):
    running = audited()
    sdk = client(running)
    sub = sdk.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES,
        extra_headers={"x-claude-code-agent-id": "a1b2c3d4e5f6",
                       "x-claude-code-parent-agent-id": "reviewer@team-x"})
    main = sdk.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=10,
                                                 messages=MESSAGES)
    with pytest.raises(anthropic.BadRequestError, match="x-claude-code-agent-id"):
        sdk.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES,
                            extra_headers={"x-claude-code-agent-id": "a" * 129})
    ids = [r.headers["x-midway-request-id"] for r in (sub, main)]
    wait_for(lambda: all(get(running, i) is not None for i in ids))
    recorded = [get(running, i) for i in ids]
    assert [(r["agent_id"], r["parent_agent_id"]) for r in recorded] == [
        ("a1b2c3d4e5f6", "reviewer@team-x"), (None, None)]
    wait_for(lambda: any(r["status"] == 400 for r in records(running)))
    [refused] = [r for r in records(running) if r["status"] == 400]
    assert refused["agent_id"] is None and "at most 128" in refused["error"]
