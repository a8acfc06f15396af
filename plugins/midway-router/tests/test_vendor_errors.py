"""Vendors' refusals in Anthropic's words with a ``capability_rejected: <capability>`` mark, one
test per row of the table in docs/router-translation.md; then end to end through midway, with
the official ``anthropic`` SDK in front of the fake OpenAI-compatible and Bedrock upstreams."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from fake_bedrock import BedrockReply, FakeBedrockServer
from fake_openai import FakeOpenAIServer, OpenAIReply

from midway_router.vendor_errors import REJECTIONS, in_anthropic_words

AWS_KEY, AWS_SECRET = "AKIAVENDORERRORS01", "vendor-errors-secret"
DOCS = Path(__file__).resolve().parents[3] / "docs" / "router-translation.md"

# (capability, vendor, status, code, the vendor's message, what the client reads)
ROWS = [
    ("prompt_too_long", "OpenAI", 400, "context_length_exceeded",
     "This model's maximum context length is 128000 tokens. However, your messages resulted in "
     "130514 tokens. Please reduce the length of the messages.",
     "prompt is too long: 130514 tokens > 128000 maximum"),
    ("prompt_too_long", "vLLM", 400, "",
     "This model's maximum context length is 32768 tokens. However, you requested 40000 tokens "
     "(39000 in the messages, 1000 in the completion).",
     "prompt is too long: 40000 tokens > 32768 maximum"),
    ("prompt_too_long", "Bedrock", 400, "ValidationException",
     "Input is too long for requested model.",
     "prompt is too long: Input is too long for requested model."),
    ("prompt_too_long", "Bedrock", 400, "ValidationException",
     "prompt is too long: 210000 tokens > 200000 maximum",
     "prompt is too long: 210000 tokens > 200000 maximum"),
    ("max_tokens", "OpenAI", 400, "invalid_value",
     "max_tokens is too large: 64000. This model supports at most 16384 completion tokens, "
     "whereas you provided 64000.",
     "max_tokens: 64000 > 16384, which is the maximum allowed number of output tokens: "
     "max_tokens is too large: 64000. This model supports at most 16384 completion tokens, "
     "whereas you provided 64000."),
    ("max_tokens", "Bedrock", 400, "ValidationException",
     "max_tokens: 64000 > 32000, which is the maximum allowed number of output tokens for "
     "claude-opus-4-1-20250805",
     "max_tokens: 64000 > 32000, which is the maximum allowed number of output tokens for "
     "claude-opus-4-1-20250805"),
    ("thinking_signature", "Bedrock", 400, "ValidationException",
     "messages.1.content.0: Invalid `signature` in `thinking` block",
     "messages.1.content.0: Invalid `signature` in `thinking` block"),
    ("thinking_signature", "OpenAI-compatible", 400, "",
     "the thinking block's signature could not be verified",
     "Invalid `signature` in `thinking` block: the thinking block's signature could not be "
     "verified"),
    ("cache_control", "Bedrock", 400, "ValidationException",
     "system.1.cache_control: Extra inputs are not permitted",
     "system.1.cache_control: Extra inputs are not permitted"),
    ("cache_control", "OpenAI-compatible", 422, "",
     "prompt caching is not available for this deployment",
     "cache_control is not supported: prompt caching is not available for this deployment"),
    ("thinking", "Bedrock", 400, "ValidationException",
     "thinking: Extra inputs are not permitted",
     "thinking is not supported on this model: thinking: Extra inputs are not permitted"),
    ("thinking", "OpenAI", 400, "unsupported_parameter",
     "Unrecognized request argument supplied: reasoning_effort",
     "thinking is not supported on this model: Unrecognized request argument supplied: "
     "reasoning_effort"),
    ("anthropic_beta", "Bedrock", 400, "ValidationException",
     "invalid beta flag",
     "Unexpected value(s) for the `anthropic-beta` header: invalid beta flag"),
    ("tools", "Ollama", 400, "",
     "registry.ollama.ai/library/gemma:2b does not support tools",
     "tools are not supported on this model: registry.ollama.ai/library/gemma:2b does not "
     "support tools"),
    ("images", "OpenAI-compatible", 400, "",
     "This model does not support image input.",
     "images are not supported on this model: This model does not support image input."),
]


@pytest.mark.parametrize(("capability", "vendor", "status", "code", "vendor_message",
                          "expected"), ROWS, ids=[f"{r[0]}-{r[1]}" for r in ROWS])
def test_each_refusal_in_anthropic_s_words(capability, vendor, status, code, vendor_message,
                                           expected) -> None:
    message, found = in_anthropic_words(vendor_message, status, code)
    assert found == capability
    assert message == f"{expected} (capability_rejected: {capability})"


def test_every_capability_has_a_row_and_a_line_in_the_docs() -> None:
    capabilities = [r.capability for r in REJECTIONS]
    assert sorted(set(capabilities)) == sorted({row[0] for row in ROWS})
    documented = set(re.findall(r"`capability_rejected: (\w+)`", DOCS.read_text()))
    assert documented == set(capabilities)


@pytest.mark.parametrize(("status", "message"), [
    (429, "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 30000. "
          "Please reduce the length of the messages."),
    (500, "The model's maximum context length handling failed"),
    (400, "messages: roles must alternate"),
    (400, "prompt is too long: 1 tokens > 0 maximum (capability_rejected: prompt_too_long)"),
])
def test_what_is_no_refusal_is_left_alone(status, message) -> None:
    assert in_anthropic_words(message, status) == (message, None)


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bedrock_server() -> Iterator[FakeBedrockServer]:
    server = FakeBedrockServer(AWS_KEY, AWS_SECRET)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(openai_server, bedrock_server, midway_factory, router_plugin) -> anthropic.Anthropic:
    proxy = midway_factory(plugins=[router_plugin], config={"router": {
        "upstreams": [
            {"name": "cheap", "kind": "openai", "url": openai_server.url, "keys": ["sk-o"]},
            {"name": "aws", "kind": "bedrock", "region": "us-east-1", "url": bedrock_server.url,
             "credentials": [{"access_key_id": AWS_KEY, "secret_access_key": AWS_SECRET}]}],
        "rules": [{"match": {"model": "claude-opus-*"}, "target": "aws"}],
        "target": "cheap"}})
    return anthropic.Anthropic(base_url=proxy.url, api_key="client", max_retries=0)


def ask(client: anthropic.Anthropic, model: str) -> None:
    client.messages.create(model=model, max_tokens=4096,
                           messages=[{"role": "user", "content": "hello"}])


def test_an_openai_context_error_reaches_the_sdk_as_anthropic_s(client, openai_server) -> None:
    openai_server.reply(OpenAIReply(status=400, error={
        "message": ROWS[0][4], "type": "invalid_request_error", "param": "messages",
        "code": "context_length_exceeded"}))
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(client, "claude-sonnet-4-6")
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == ("prompt is too long: 130514 tokens > 128000 maximum "
                                "(capability_rejected: prompt_too_long)")


def test_a_bedrock_signature_refusal_keeps_anthropic_s_wording(client, bedrock_server) -> None:
    bedrock_server.reply(BedrockReply(status=400, error_type="ValidationException",
                                      error_message=ROWS[6][4]))
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(client, "claude-opus-4-8")
    assert caught.value.body["error"]["message"] == (  # type: ignore[index]
        "messages.1.content.0: Invalid `signature` in `thinking` block "
        "(capability_rejected: thinking_signature)")


def test_a_bedrock_rate_limit_is_no_capability(client, bedrock_server) -> None:
    bedrock_server.reply(BedrockReply(status=429, error_type="ThrottlingException",
                                      error_message="Too many tokens, please wait"))
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask(client, "claude-opus-4-8")
    assert "capability_rejected" not in caught.value.body["error"]["message"]  # type: ignore[index]


def _error_event(out: bytes) -> dict:
    import orjson

    name, data = out.strip().split(b"\n")[-2:]
    assert name == b"event: error"
    return orjson.loads(data.removeprefix(b"data: "))["error"]


def test_a_refusal_mid_stream_is_worded_too() -> None:
    import orjson

    from midway_router.openai_translate import OpenAIStreamTranslator, ToolNames

    translator = OpenAIStreamTranslator(ToolNames(), [], "gpt-fake-1")
    out = translator.feed(b"data: " + orjson.dumps({"error": {
        "message": ROWS[0][4], "type": "invalid_request_error",
        "code": "context_length_exceeded"}}) + b"\n\n")
    assert _error_event(out) == {"type": "invalid_request_error", "message": (
        "prompt is too long: 130514 tokens > 128000 maximum "
        "(capability_rejected: prompt_too_long)")}
    # a server error mid-stream stays what it was
    translator = OpenAIStreamTranslator(ToolNames(), [], "gpt-fake-1")
    out = translator.feed(b'data: {"error": {"message": "upstream failed", "code": 500}}\n\n')
    assert _error_event(out) == {"type": "api_error", "message": "upstream failed"}


def test_a_bedrock_validation_exception_mid_stream_is_worded() -> None:
    from fake_bedrock import exception_message

    from midway_router.bedrock_adapter import BedrockStreamTranslator

    out = BedrockStreamTranslator().feed(exception_message(
        "validationException", "Input is too long for requested model."))
    assert _error_event(out) == {"type": "invalid_request_error", "message": (
        "prompt is too long: Input is too long for requested model. "
        "(capability_rejected: prompt_too_long)")}
    throttled = BedrockStreamTranslator().feed(exception_message(
        "throttlingException", "Too many tokens, please wait before trying again."))
    assert _error_event(throttled)["type"] == "rate_limit_error"
    assert "capability_rejected" not in _error_event(throttled)["message"]
