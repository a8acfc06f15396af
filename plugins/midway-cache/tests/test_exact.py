"""The exact layer end to end: a real midway, the fake upstream, the official SDK."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from conftest import RICH_CONTENT, USE_CACHE, body, client, stats, stored, without_ids

from midway.testing import Reply


def test_miss_then_hit_with_headers(cached, fake_upstream):
    running = cached()
    c = client(running)
    first = c.messages.with_raw_response.create(**body())
    stored(running)
    second = c.messages.with_raw_response.create(**body())
    assert first.headers["x-midway-cache"] == "miss"
    assert second.headers["x-midway-cache"] == "hit"
    assert len(fake_upstream.messages_requests) == 1
    assert without_ids(second.parse()) == without_ids(first.parse())
    assert second.parse().id != first.parse().id
    s = stats(running)
    assert (s["entries"], s["hits"], s["misses"]) == (1, 1, 1)
    assert s["saved_tokens"] > 0


def test_other_tenant_misses(cached, fake_upstream):
    running = cached()
    client(running, "sk-ant-test-alice").messages.create(**body())
    stored(running)
    other = client(running, "sk-ant-test-bob").messages.with_raw_response.create(**body())
    again = client(running, "sk-ant-test-alice").messages.with_raw_response.create(**body())
    assert other.headers["x-midway-cache"] == "miss"
    assert again.headers["x-midway-cache"] == "hit"
    assert len(fake_upstream.messages_requests) == 2


def test_shared_scope_serves_everyone(cached, fake_upstream):
    running = cached(share="global")
    client(running, "sk-ant-test-alice").messages.create(**body())
    stored(running)
    other = client(running, "sk-ant-test-bob").messages.with_raw_response.create(**body())
    assert other.headers["x-midway-cache"] == "hit"


def test_answer_determining_fields_are_in_the_key(cached, fake_upstream):
    running = cached()
    c = client(running)
    c.messages.create(**body())
    stored(running)
    variants = [{"temperature": 0.2}, {"max_tokens": 100}, {"system": "Be terse."},
                {"stop_sequences": ["END"]}, {"model": "claude-haiku-4-5"},
                {"thinking": {"type": "enabled", "budget_tokens": 1024}},
                {"tool_choice": {"type": "auto"}}]
    for variant in variants:
        answer = c.messages.with_raw_response.create(**body(), extra_body=variant)
        assert answer.headers["x-midway-cache"] == "miss", variant
    beta = c.messages.with_raw_response.create(
        **body(), extra_headers={"anthropic-beta": "context-1m-2025-08-07"})
    assert beta.headers["x-midway-cache"] == "miss"
    # metadata and cache_control markers do not change the answer
    same = body()
    same["messages"] = [{"role": "user", "content": [
        {"type": "text", "text": "What is the capital of France?",
         "cache_control": {"type": "ephemeral"}}]}]
    answer = c.messages.with_raw_response.create(**same, extra_body={"metadata": {"user_id": "u"}})
    assert answer.headers["x-midway-cache"] == "hit"


def test_stream_then_json_replay_equals_original(cached, fake_upstream):
    fake_upstream.reply(Reply(content=RICH_CONTENT))
    running = cached()
    c = client(running)
    with c.messages.stream(**body("Weather in Paris?")) as stream:
        original = stream.get_final_message()
    stored(running)
    replayed = c.messages.with_raw_response.create(**body("Weather in Paris?"))
    assert replayed.headers["x-midway-cache"] == "hit"
    message = replayed.parse()
    assert without_ids(message) == without_ids(original)
    assert message.content[0].signature == "sig_abc"
    assert message.content[2].id.startswith("toolu_01")
    assert message.content[2].id != original.content[2].id
    assert message.usage == original.usage


def test_json_then_stream_replay_equals_original(cached, fake_upstream):
    fake_upstream.reply(Reply(content=RICH_CONTENT))
    running = cached()
    c = client(running)
    original = c.messages.create(**body("Weather in Paris?"))
    stored(running)
    with c.messages.stream(**body("Weather in Paris?")) as stream:
        replayed = stream.get_final_message()
        assert stream.response.headers["x-midway-cache"] == "hit"
    assert without_ids(replayed) == without_ids(original)
    assert replayed.content[2].input == {"city": "Paris", "days": 3}
    assert replayed.usage.input_tokens == original.usage.input_tokens
    assert replayed.usage.output_tokens == original.usage.output_tokens
    assert len(fake_upstream.messages_requests) == 1


def test_streamed_answer_replays_as_stream(cached, fake_upstream):
    fake_upstream.reply(Reply(content=RICH_CONTENT, chunk_size=7))
    running = cached()
    c = client(running)
    with c.messages.stream(**body("Weather?")) as stream:
        original = stream.get_final_message()
    stored(running)
    with c.messages.stream(**body("Weather?")) as stream:
        events = [event.type for event in stream]
        replayed = stream.get_final_message()
    assert without_ids(replayed) == without_ids(original)
    assert events[0] == "message_start"
    assert "input_json" in events  # tool_use replayed as input_json_delta
    assert "signature" in events
    assert events[-1] == "message_stop"


@pytest.mark.parametrize("failure", [
    {"error_after": 4}, {"truncate_after": 4}, {"reset_after": 4},
])
def test_partial_or_errored_stream_is_not_stored(cached, fake_upstream, failure):
    fake_upstream.reply(Reply(**failure))
    running = cached()
    c = client(running)
    try:
        with c.messages.stream(**body()) as stream:
            stream.get_final_message()
    except Exception:
        pass  # the SDK reports the failure; what matters is the cache
    again = c.messages.with_raw_response.create(**body())
    assert again.headers["x-midway-cache"] == "miss"
    assert len(fake_upstream.messages_requests) == 2
    stored(running)  # only the second, complete answer
    assert stats(running)["stores"] == 1


def test_error_answer_is_not_stored(cached, fake_upstream):
    fake_upstream.reply(Reply(status=529, error_type="overloaded_error"))
    running = cached()
    c = client(running)
    with pytest.raises(Exception):
        c.messages.create(**body())
    assert c.messages.with_raw_response.create(**body()).headers["x-midway-cache"] == "miss"
    assert len(fake_upstream.messages_requests) == 2


def test_bypass_and_refresh_headers(cached, fake_upstream):
    running = cached()
    c = client(running)
    c.messages.create(**body())
    stored(running)
    bypass = c.messages.with_raw_response.create(**body(),
                                                 extra_headers={"x-midway-cache": "bypass"})
    assert bypass.headers["x-midway-cache"] == "bypass"
    fake_upstream.reply(Reply(content=[{"type": "text", "text": "Paris, refreshed."}]))
    refresh = c.messages.with_raw_response.create(**body(),
                                                  extra_headers={"x-midway-cache": "refresh"})
    assert refresh.headers["x-midway-cache"] == "miss"
    stored(running, 2)
    hit = c.messages.with_raw_response.create(**body())
    assert hit.headers["x-midway-cache"] == "hit"
    assert hit.parse().content[0].text == "Paris, refreshed."
    assert len(fake_upstream.messages_requests) == 3
    # the control header never reaches the upstream
    assert all("x-midway-cache" not in r.headers for r in fake_upstream.messages_requests)


def test_stampede_sends_one_upstream_request(cached, fake_upstream):
    fake_upstream.reply(Reply(delay=0.05))  # the leader's answer takes a while
    running = cached()

    async def burst() -> list[tuple[int, str]]:
        async with aiohttp.ClientSession() as session:
            async def one() -> tuple[int, str]:
                async with session.post(f"{running.url}/v1/messages", json=body(stream=True),
                                        headers={**USE_CACHE, "x-api-key": "sk-ant-test-alice",
                                                 "anthropic-version": "2023-06-01"}) as resp:
                    text = await resp.text()
                    assert "message_stop" in text
                    return resp.status, resp.headers["x-midway-cache"]
            return await asyncio.gather(*[one() for _ in range(50)])

    results = asyncio.run(burst())
    assert len(fake_upstream.messages_requests) == 1
    assert all(status == 200 for status, _ in results)
    assert sorted(h for _, h in results).count("hit") == 49


def test_client_disconnect_is_not_stored(cached, fake_upstream):
    fake_upstream.reply(Reply(delay=0.2, text_chunks=10))
    running = cached()
    c = client(running)
    with c.messages.stream(**body()) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break  # leave mid-stream: the client disconnects
    from midway.testing import wait_for
    wait_for(lambda: fake_upstream.messages_requests[0].finished_at is not None)
    wait_for(lambda: running.proxy.open_streams == 0)
    assert c.messages.with_raw_response.create(**body()).headers["x-midway-cache"] == "miss"
