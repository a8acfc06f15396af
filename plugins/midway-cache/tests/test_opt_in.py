"""The cache is opt-in: installed with its defaults it changes nothing a client receives; a
request asks for it (``x-midway-cache: use``) or a ``[cache] rules`` entry opts it in; a replay
carries a synthetic request id and says it is a replay."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import USE_CACHE, body, stats

import midway_cache
from midway.config import ConfigError
from midway.fake_upstream import RecordedRequest, Reply
from midway.options import load_table
from midway.sse import encode_event
from midway.testing import FakeUpstream, RunningMidway, wait_for
from midway_cache import CacheConfig

UPSTREAM_ID = "req_011CupstreamFixedId0000000"
MESSAGE = {"id": "msg_01FixedFixedFixedFixed0000", "type": "message", "role": "assistant",
           "model": "claude-sonnet-4-6", "content": [{"type": "text", "text": "Heads."}],
           "stop_reason": "end_turn", "stop_sequence": None,
           "usage": {"input_tokens": 12, "output_tokens": 3}}
RATE_LIMIT = {"request-id": UPSTREAM_ID, "anthropic-ratelimit-requests-remaining": "49",
              "anthropic-ratelimit-tokens-reset": "2026-12-05T17:00:00Z"}


def fixed_answer(rec: RecordedRequest) -> Reply:
    """The same bytes every time (the fake's own ids are random), so two midways' answers
    can be compared byte for byte."""
    if rec.json.get("stream"):
        start = {**MESSAGE, "content": [], "stop_reason": None}
        events = [encode_event("message_start", {"type": "message_start", "message": start}),
                  encode_event("content_block_start", {
                      "type": "content_block_start", "index": 0,
                      "content_block": {"type": "text", "text": ""}}),
                  encode_event("content_block_delta", {
                      "type": "content_block_delta", "index": 0,
                      "delta": {"type": "text_delta", "text": "Heads."}}),
                  encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                  encode_event("message_delta", {
                      "type": "message_delta",
                      "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                      "usage": {"output_tokens": 3}}),
                  encode_event("message_stop", {"type": "message_stop"})]
        return Reply(events=events, headers=RATE_LIMIT)
    return Reply(body=orjson.dumps(MESSAGE), headers=RATE_LIMIT)


Received = tuple[int, list[tuple[str, str]], bytes]


def post(running: RunningMidway, payload: dict[str, Any],
         headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{running.url}/v1/messages", json=payload, timeout=10,
                      headers={"x-api-key": "sk-ant-test-alice",
                               "anthropic-version": "2023-06-01", **(headers or {})})


def received(response: httpx.Response) -> Received:
    """What the client got, less what differs on every answer of any midway."""
    varying = {"date", "x-midway-request-id"}
    return (response.status_code,
            [(k, v) for k, v in response.headers.multi_items() if k.lower() not in varying],
            response.content)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_installed_cache_changes_nothing_a_client_receives(
        midway_factory: Callable[..., RunningMidway], fake_upstream: FakeUpstream,
        stream: bool) -> None:
    fake_upstream.fake.default = fixed_answer
    plain = midway_factory()
    cached = midway_factory(plugins=[("cache", midway_cache)])  # its defaults: no rules
    sampled = body("Toss a coin.", temperature=1.0, stream=stream)
    without = [received(post(plain, sampled)) for _ in range(2)]
    with_cache = [received(post(cached, sampled)) for _ in range(2)]
    assert with_cache == without
    assert without[0][0] == 200 and (b"message_stop" in without[0][2]) == stream
    assert len(fake_upstream.messages_requests) == 4  # every request answered upstream
    counters = stats(cached)
    assert counters["hits"] == counters["misses"] == counters["stores"] == 0


def test_a_request_that_asks_gets_a_replay_with_a_synthetic_request_id(
        cached: Callable[..., RunningMidway], fake_upstream: FakeUpstream) -> None:
    fake_upstream.fake.default = fixed_answer
    running = cached()
    first = post(running, body(), USE_CACHE)
    assert first.headers["x-midway-cache"] == "miss"
    assert first.headers["request-id"] == UPSTREAM_ID
    assert "x-midway-cache-replay" not in first.headers
    # post_response stores after the client has its answer: wait for the entry
    wait_for(lambda: stats(running)["stores"] == 1)
    hit, again = post(running, body(), USE_CACHE), post(running, body(), USE_CACHE)
    assert hit.headers["x-midway-cache"] == again.headers["x-midway-cache"] == "hit"
    assert hit.headers["x-midway-cache-replay"] == "true"
    assert hit.headers["request-id"].startswith("req_midway_")
    assert hit.headers["request-id"] != again.headers["request-id"]
    assert hit.json()["content"] == MESSAGE["content"]
    assert len(fake_upstream.messages_requests) == 1
    # not asking: upstream again, untouched
    plain = post(running, body())
    assert plain.headers["request-id"] == UPSTREAM_ID and "x-midway-cache" not in plain.headers
    assert len(fake_upstream.messages_requests) == 2


def test_a_temperature_rule_caches_only_deterministic_requests(
        cached: Callable[..., RunningMidway], fake_upstream: FakeUpstream) -> None:
    running = cached(rules=[{"temperature": 0}])
    for temperature in (1.0, None):  # None: Anthropic's default, 1.0
        extra = {} if temperature is None else {"temperature": temperature}
        answers = [post(running, body("Toss a coin.", **extra)) for _ in range(2)]
        assert all("x-midway-cache" not in a.headers for a in answers)
    assert len(fake_upstream.messages_requests) == 4
    post(running, body("What is 2 + 2?", temperature=0))
    wait_for(lambda: stats(running)["stores"] == 1)
    assert post(running, body("What is 2 + 2?", temperature=0)).headers["x-midway-cache"] == "hit"
    assert len(fake_upstream.messages_requests) == 5


def test_model_and_team_rules(midway_factory: Callable[..., RunningMidway],
                              fake_upstream: FakeUpstream) -> None:
    keys = [{"key": "mk-alice", "name": "alice", "team": "search"},
            {"key": "mk-bob", "name": "bob", "team": "ads"}]
    running = midway_factory(plugins=[("cache", midway_cache)], config={
        "midway": {"client_keys": keys},
        "cache": {"rules": [{"model": "claude-haiku-*"}, {"team": "search", "path": "/v1/*"}]}})

    def result(key: str, model: str) -> str | None:
        answer = httpx.post(f"{running.url}/v1/messages", timeout=10,
                            json={**body(), "model": model},
                            headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
        assert answer.status_code == 200
        return answer.headers.get("x-midway-cache")

    assert result("mk-bob", "claude-sonnet-4-6") is None  # neither rule
    assert result("mk-bob", "claude-haiku-4-5") == "miss"  # the model rule
    assert result("mk-alice", "claude-sonnet-4-6") == "miss"  # the team rule


@pytest.mark.parametrize("rules, message", [
    ([{}], "rule 1: expected a table"),
    ([{"modle": "x"}], "unknown condition 'modle'"),
    ([{"temperature": "zero"}], "temperature must be a number"),
    ({"model": "x"}, "expected a list of tables"),
])
def test_a_bad_rule_is_one_line_naming_it(rules: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_table(CacheConfig, "cache", {"rules": rules}, source="midway.toml",
                   data_dir=tmp_path)
    text = str(caught.value)
    assert text.startswith("midway.toml: [cache] rules: ") and message in text
    assert "\n" not in text


def test_rules_from_the_environment(tmp_path: Path) -> None:
    config = load_table(CacheConfig, "cache", None, data_dir=tmp_path, env={
        "MIDWAY_CACHE__RULES": '[{ model = "claude-haiku-*", temperature = 0 }]'})
    (rule,) = config.rules
    assert rule.model == "claude-haiku-*" and rule.temperature == 0.0
