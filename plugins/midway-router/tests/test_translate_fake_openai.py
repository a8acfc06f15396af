"""The fake OpenAI server's wire format, checked with the official ``openai`` SDK."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from fake_openai import FakeOpenAIServer, OpenAIReply, ToolCall

TOOLS = [{"type": "function", "function": {
    "name": name, "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
    for name in ("search", "lookup")]


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(fake: FakeOpenAIServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fake.url}/v1", api_key="sk-test", max_retries=0)


def test_sdk_parses_a_completion(fake: FakeOpenAIServer, client: openai.OpenAI) -> None:
    fake.reply(OpenAIReply(content="Hi there", cached_tokens=5))
    result = client.chat.completions.create(model="gpt-fake-1",
                                            messages=[{"role": "user", "content": "Hello"}])
    assert result.choices[0].message.content == "Hi there"
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert result.usage.prompt_tokens == 25
    assert result.usage.prompt_tokens_details is not None
    assert result.usage.prompt_tokens_details.cached_tokens == 5
    assert fake.requests[0].headers["authorization"] == "Bearer sk-test"


def test_sdk_parses_tool_calls(fake: FakeOpenAIServer, client: openai.OpenAI) -> None:
    fake.reply(OpenAIReply(content=None, tool_calls=[ToolCall("search", '{"q": "a"}')]))
    result = client.chat.completions.create(model="gpt-fake-1", tools=TOOLS,  # type: ignore[arg-type]
                                            messages=[{"role": "user", "content": "Find"}])
    call = result.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "search"  # type: ignore[union-attr]
    assert call.function.arguments == '{"q": "a"}'  # type: ignore[union-attr]
    assert result.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("interleave", [False, True])
def test_sdk_accumulates_a_streamed_answer(fake: FakeOpenAIServer, client: openai.OpenAI,
                                           interleave: bool) -> None:
    fake.reply(OpenAIReply(content="Let me look.", interleave=interleave, chunk_size=7,
                           tool_calls=[ToolCall("search", '{"q": "first query"}'),
                                       ToolCall("lookup", '{"q": "second"}')]))
    with client.chat.completions.stream(
            model="gpt-fake-1", tools=TOOLS,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "Find"}],
            stream_options={"include_usage": True}) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Let me look."
    calls = [(c.id, c.function.name, c.function.arguments)  # type: ignore[union-attr]
             for c in message.tool_calls or []]
    assert calls == [("call_1x0", "search", '{"q": "first query"}'),
                     ("call_1x1", "lookup", '{"q": "second"}')]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None
    assert final.usage.completion_tokens == 12


def test_sdk_raises_on_error_answers(fake: FakeOpenAIServer, client: openai.OpenAI) -> None:
    fake.reply(OpenAIReply(status=429, error={"message": "Rate limit reached",
                                              "type": "requests", "param": None,
                                              "code": "rate_limit_exceeded"}))
    with pytest.raises(openai.RateLimitError, match="Rate limit reached"):
        client.chat.completions.create(model="gpt-fake-1",
                                       messages=[{"role": "user", "content": "Hello"}])
