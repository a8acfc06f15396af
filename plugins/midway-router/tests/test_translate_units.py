"""Edges of the OpenAI translation, function by function."""

from __future__ import annotations

import orjson
import pytest

from midway import MidwayError, Upstream
from midway.testing import make_exchange
from midway_router.openai_adapter import OpenAIAdapter, chat_completions_url
from midway_router.openai_translate import (
    ToolNames,
    TranslationError,
    to_anthropic_error,
    to_anthropic_message,
    to_openai_request,
)


def request(messages: list[object], **extra: object) -> dict[str, object]:
    return to_openai_request({"model": "m", "max_tokens": 10, "messages": messages, **extra},
                             "gpt", ToolNames())


def test_tool_result_images_and_documents() -> None:
    png = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    out = request([{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "screenshot:"}, {"type": "image", "source": png}]},
        {"type": "document", "title": "spec.pdf",
         "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                        "data": "plain doc"}}]}])
    assert out["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "screenshot:"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "file", "file": {"filename": "spec.pdf",
                                      "file_data": "data:application/pdf;base64,JVBE"}},
            {"type": "text", "text": "plain doc"}]}]


def test_sources_another_vendor_cannot_fetch_are_refused() -> None:
    with pytest.raises(TranslationError, match="image sources"):
        request([{"role": "user", "content": [
            {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}])
    adapter = OpenAIAdapter()
    exchange = make_exchange(body={"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "image", "source": {"type": "file",
                                                                  "file_id": "f"}}]}]})
    with pytest.raises(MidwayError) as raised:
        adapter.prepare(exchange, Upstream(url="http://vendor"))
    assert raised.value.status == 400


def test_only_messages_are_translated() -> None:
    exchange = make_exchange(path="/v1/messages/count_tokens")
    with pytest.raises(MidwayError) as raised:
        OpenAIAdapter().prepare(exchange, Upstream(url="http://vendor"))
    assert raised.value.status == 404


def test_tool_choice_variants_and_server_tools() -> None:
    tools = [{"name": "a", "input_schema": {"type": "object"}},
             {"type": "web_search_20250305", "name": "web_search"}]
    for choice, want in [({"type": "auto"}, "auto"), ({"type": "none"}, "none"),
                         ({"type": "tool", "name": "a"},
                          {"type": "function", "function": {"name": "a"}})]:
        out = request([{"role": "user", "content": "x"}], tools=tools, tool_choice=choice)
        assert out["tool_choice"] == want
        assert [t["function"]["name"] for t in out["tools"]] == ["a"]  # type: ignore[attr-defined]
    assert "tool_choice" not in request([{"role": "user", "content": "x"}],
                                        tool_choice={"type": "auto"})


def test_prepare_builds_the_vendor_request() -> None:
    exchange = make_exchange(body={"model": "claude-haiku-4-5", "max_tokens": 5,
                                   "messages": [{"role": "user", "content": "x"}]})
    prepared = OpenAIAdapter(model="llama-3", max_tokens_field="max_completion_tokens").prepare(
        exchange, Upstream(url="https://api.groq.com/openai/v1",
                           headers={"Authorization": "gsk_secret", "X-Title": "midway"}))
    assert prepared.url == "https://api.groq.com/openai/v1/chat/completions"
    assert prepared.headers["authorization"] == "Bearer gsk_secret"
    assert prepared.headers["x-title"] == "midway"
    assert "x-api-key" not in prepared.headers
    body = orjson.loads(prepared.body)
    assert body["model"] == "llama-3" and body["max_completion_tokens"] == 5


@pytest.mark.parametrize(("base", "url"), [
    ("https://api.openai.com", "https://api.openai.com/v1/chat/completions"),
    ("https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
    ("https://x.example/api/v4", "https://x.example/api/v4/chat/completions"),
    ("https://x.example/openai/chat/completions", "https://x.example/openai/chat/completions"),
    ("https://x.example/v1?api-version=2", "https://x.example/v1/chat/completions?api-version=2"),
])
def test_endpoint_urls(base: str, url: str) -> None:
    assert chat_completions_url(base) == url


def test_unparseable_arguments_are_kept() -> None:
    message = to_anthropic_message({"id": "x", "model": "gpt", "choices": [{
        "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}}]},
        "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                             "prompt_cache_hit_tokens": 1}},
        ToolNames(), [], "gpt")
    assert message["content"] == [
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"_arguments": "{oops"}},
        {"type": "tool_use", "id": "c2", "name": "g", "input": {}}]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 2, "output_tokens": 2,
                                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1}


def test_errors_that_are_not_json() -> None:
    assert orjson.loads(to_anthropic_error(502, b"<html>Bad gateway</html>")) == {
        "type": "error", "error": {"type": "api_error", "message": "<html>Bad gateway</html>"}}
    assert orjson.loads(to_anthropic_error(418, b"")) == {
        "type": "error", "error": {"type": "invalid_request_error", "message": "upstream error"}}
    adapter = OpenAIAdapter()
    exchange = make_exchange()
    assert orjson.loads(adapter.translate_json(exchange, b"not json"))["type"] == "error"
