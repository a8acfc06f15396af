"""Anthropic clients served by an OpenAI-compatible vendor: the official ``anthropic`` SDK
drives midway, whose OpenAIAdapter talks to the fake Chat Completions server."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest
from fake_openai import FakeOpenAIServer, OpenAIReply, ToolCall

from midway import Upstream, hookimpl
from midway.testing import RunningMidway, wait_for
from midway_router.openai_adapter import OpenAIAdapter

LONG_NAME = "mcp__enterprise_knowledge_base__search_documents_by_semantic_similarity_v2"
PIXEL = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
         "RU5ErkJggg==")
TOOLS: list[Any] = [
    {"name": "get_weather", "description": "Weather for a city",
     "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema",
                      "type": "object", "properties": {"city": {"type": "string"}},
                      "required": ["city"]}},
    {"name": LONG_NAME, "description": "Search",
     "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}},
]


class Route:
    """A minimal choose_upstream: every request to the OpenAI-compatible fake."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.finished: list[Any] = []

    @hookimpl
    def choose_upstream(self) -> Upstream:
        return self.upstream

    @hookimpl
    def post_response(self, exchange: Any) -> None:
        self.finished.append(exchange)


@pytest.fixture
def vendor() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def route(vendor: FakeOpenAIServer) -> Route:
    return Route(Upstream(url=vendor.url, name="openai", adapter=OpenAIAdapter(),
                          headers={"x-api-key": "sk-vendor-secret"}, passthrough_auth=False,
                          model="gpt-fake-1"))


@pytest.fixture
def proxy(midway_factory: Callable[..., RunningMidway], route: Route) -> RunningMidway:
    return midway_factory(plugins=[("translate_route", route)])


@pytest.fixture
def client(proxy: RunningMidway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-client", max_retries=0)


def summary(message: Any) -> dict[str, Any]:
    """What must be equal between the expected and the received message."""
    return {"role": message.role, "model": message.model, "stop_reason": message.stop_reason,
            "stop_sequence": message.stop_sequence,
            "content": [b.model_dump(exclude_none=True) for b in message.content],
            "usage": {k: getattr(message.usage, k) for k in (
                "input_tokens", "output_tokens", "cache_read_input_tokens",
                "cache_creation_input_tokens")}}


def expected(content: list[dict[str, Any]], stop_reason: str = "end_turn",
             stop_sequence: str | None = None, input_tokens: int = 25, cached: int = 0,
             output_tokens: int = 12) -> dict[str, Any]:
    return {"role": "assistant", "model": "gpt-fake-1", "stop_reason": stop_reason,
            "stop_sequence": stop_sequence, "content": content,
            "usage": {"input_tokens": input_tokens - cached, "output_tokens": output_tokens,
                      "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}}


def ask(client: anthropic.Anthropic, stream: bool, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 1024,
                              "messages": [{"role": "user", "content": "Hello"}], **kwargs}
    if not stream:
        return client.messages.create(**params)
    with client.messages.stream(**params) as events:
        return events.get_final_message()


@pytest.mark.parametrize("stream", [False, True])
def test_text(vendor: FakeOpenAIServer, client: anthropic.Anthropic, stream: bool) -> None:
    vendor.reply(OpenAIReply(content="Bonjour, ça va ? 🌍", cached_tokens=10))
    message = ask(client, stream, system=[
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1"},
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        extra_body={"temperature": 0.2, "top_k": 5})
    assert summary(message) == expected([{"type": "text", "text": "Bonjour, ça va ? 🌍"}],
                                        cached=10)
    sent = vendor.requests[0]
    assert sent.body["messages"] == [
        {"role": "system", "content": "x-anthropic-billing-header: cc_version=2.1\n\n"
                                      "You are terse."},
        {"role": "user", "content": "Hello"}]
    assert sent.body["model"] == "gpt-fake-1"
    assert sent.body["max_tokens"] == 1024
    assert sent.body["temperature"] == 0.2
    assert "top_k" not in sent.body
    if stream:
        assert sent.body["stream"] is True
        assert sent.body["stream_options"] == {"include_usage": True}
    else:
        assert "stream" not in sent.body
    # The vendor gets the upstream's credential, never the client's.
    assert sent.headers["authorization"] == "Bearer sk-vendor-secret"
    assert "sk-ant-client" not in str(dict(sent.headers))
    assert "x-api-key" not in sent.headers


@pytest.mark.parametrize("stream", [False, True])
def test_multi_turn_tools(vendor: FakeOpenAIServer, client: anthropic.Anthropic,
                          stream: bool) -> None:
    vendor.reply(OpenAIReply(content=None, tool_calls=[
        ToolCall(LONG_NAME[:55] + "_" + _hash(LONG_NAME), '{"query": "paris"}',
                 id="call_second")]))
    history: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should call the tool.", "signature": "c2ln"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
             "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_01B", "name": LONG_NAME,
             "input": {"query": "paris weather"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18°C, sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_01B", "is_error": True,
             "content": [{"type": "text", "text": "index offline"}]},
            {"type": "text", "text": "Also search the docs."}]},
    ]
    message = ask(client, stream, messages=history, tools=TOOLS,
                  tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert summary(message) == expected(
        [{"type": "tool_use", "id": "call_second", "name": LONG_NAME,
          "input": {"query": "paris"}}], stop_reason="tool_use")
    body = vendor.requests[0].body
    short = LONG_NAME[:55] + "_" + _hash(LONG_NAME)
    assert len(short) == 64
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_01A", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_01B", "type": "function",
             "function": {"name": short, "arguments": '{"query":"paris weather"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_01A", "content": "18°C, sunny"},
        {"role": "tool", "tool_call_id": "toolu_01B", "content": "Error: index offline"},
        {"role": "user", "content": "Also search the docs."}]
    assert body["tools"] == [
        {"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}},
        {"type": "function", "function": {
            "name": short, "description": "Search",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
    assert body["tool_choice"] == "required"
    assert body["parallel_tool_calls"] is False
    assert "thinking" not in str(body["messages"])  # never sent with a foreign signature


@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls(vendor: FakeOpenAIServer, client: anthropic.Anthropic,
                             stream: bool, interleave: bool) -> None:
    calls = [ToolCall("get_weather", '{"city": "Paris"}', id="call_a"),
             ToolCall("get_weather", '{"city": "Tokyo, Japan"}', id="call_b"),
             ToolCall("get_weather", '{"city": "Lima"}', id="call_c")]
    vendor.reply(OpenAIReply(content="Three lookups.", tool_calls=calls, interleave=interleave,
                             arg_fragments=4, chunk_size=1 if stream else None))
    message = ask(client, stream, tools=TOOLS[:1])
    assert summary(message) == expected(
        [{"type": "text", "text": "Three lookups."}] +
        [{"type": "tool_use", "id": f"call_{x}", "name": "get_weather", "input": {"city": c}}
         for x, c in (("a", "Paris"), ("b", "Tokyo, Japan"), ("c", "Lima"))],
        stop_reason="tool_use")


@pytest.mark.parametrize("stream", [False, True])
def test_images(vendor: FakeOpenAIServer, client: anthropic.Anthropic, stream: bool) -> None:
    vendor.reply(OpenAIReply(content="A red pixel and a cat."))
    message = ask(client, stream, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Describe these."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": PIXEL}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]}])
    assert message.content[0].text == "A red pixel and a cat."
    assert vendor.requests[0].body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Describe these."},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("reply", "stop_reason", "stop_sequence"), [
    (OpenAIReply(content="cut", finish_reason="length"), "max_tokens", None),
    (OpenAIReply(content="", finish_reason="content_filter"), "refusal", None),
    (OpenAIReply(content="1, 2, 3", choice_extra={"stop_reason": "END"}), "stop_sequence",
     "END"),
    (OpenAIReply(content="done"), "end_turn", None),
])
def test_stop_reasons(vendor: FakeOpenAIServer, client: anthropic.Anthropic, stream: bool,
                      reply: OpenAIReply, stop_reason: str, stop_sequence: str | None) -> None:
    vendor.reply(reply)
    message = ask(client, stream, stop_sequences=["END", "STOP"])
    assert (message.stop_reason, message.stop_sequence) == (stop_reason, stop_sequence)
    assert [b.text for b in message.content] == ([reply.content] if reply.content else [])
    assert vendor.requests[0].body["stop"] == ["END", "STOP"]


def test_claude_code_shaped_request(vendor: FakeOpenAIServer, client: anthropic.Anthropic
                                    ) -> None:
    """role "system" mid-conversation, thinking and output_config, tools with $schema."""
    vendor.reply(OpenAIReply(content='{"title": "Weather"}'))
    message = ask(client, True, thinking={"type": "adaptive"},
                  metadata={"user_id": '{"device_id": "d"}'},
                  extra_body={"output_config": {"effort": "high", "format": {
                      "type": "json_schema", "schema": {"type": "object"}}},
                      "context_management": {"edits": []}},
                  messages=[{"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello!"},
                            {"role": "system", "content": "The user switched to plan mode."},
                            {"role": "user", "content": [{"type": "text", "text": "Plan."},
                                                         {"type": "text", "text": "Go."}]}])
    assert message.content[0].text == '{"title": "Weather"}'
    body = vendor.requests[0].body
    assert body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "system", "content": "The user switched to plan mode."},
        {"role": "user", "content": [{"type": "text", "text": "Plan."},
                                     {"type": "text", "text": "Go."}]}]
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": {"type": "object"}, "strict": True}}
    for dropped in ("thinking", "metadata", "output_config", "context_management"):
        assert dropped not in body


def test_vendor_errors_reach_the_client_in_anthropic_format(
        vendor: FakeOpenAIServer, client: anthropic.Anthropic) -> None:
    vendor.reply(OpenAIReply(status=429, error={"message": "Rate limit reached for gpt",
                                                "type": "requests", "param": None,
                                                "code": "rate_limit_exceeded"}),
                 OpenAIReply(status=400, error={
                     "message": "This model's maximum context length is 128000 tokens.",
                     "type": "invalid_request_error", "param": "messages",
                     "code": "context_length_exceeded"}),
                 OpenAIReply(status=503, error={"message": "overloaded", "type": "server_error",
                                                "param": None, "code": None}))
    with pytest.raises(anthropic.RateLimitError) as limited:
        ask(client, False)
    assert limited.value.body == {"type": "error", "error": {
        "type": "rate_limit_error", "message": "Rate limit reached for gpt"}}
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        ask(client, True)
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        ask(client, False)
    assert overloaded.value.status_code == 503
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_mid_stream_vendor_error_becomes_an_error_event(
        vendor: FakeOpenAIServer, client: anthropic.Anthropic) -> None:
    vendor.reply(OpenAIReply(content="partial answer", error_after=3))
    with pytest.raises(anthropic.APIStatusError, match="server had an error"):
        ask(client, True)


def test_truncated_vendor_stream_ends_with_an_error_event(
        vendor: FakeOpenAIServer, client: anthropic.Anthropic) -> None:
    vendor.reply(OpenAIReply(content="partial answer", truncate_after=3))
    with pytest.raises(anthropic.APIStatusError, match="ended the stream"):
        ask(client, True)


def test_usage_and_model_reach_the_exchange(vendor: FakeOpenAIServer, route: Route,
                                            client: anthropic.Anthropic) -> None:
    vendor.reply(OpenAIReply(content="ok", prompt_tokens=100, cached_tokens=40,
                             completion_tokens=7))
    ask(client, True)
    wait_for(lambda: bool(route.finished))
    exchange = route.finished[0]
    assert (exchange.usage.input_tokens, exchange.usage.cache_read_input_tokens,
            exchange.usage.output_tokens) == (60, 40, 7)
    assert exchange.stop_reason == "end_turn"
    assert exchange.response_model == "gpt-fake-1"
    assert exchange.status == 200


def _hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]
