"""Rules routing to other vendors end to end: the anthropic SDK talks to midway; a rule sends
background Haiku calls to an OpenAI-compatible vendor with a model rewrite, Opus to Bedrock,
the rest to Anthropic; a failing vendor falls back to Anthropic before the first byte."""

from __future__ import annotations

import anthropic
import pytest
from conftest import key_of
from fake_bedrock import BedrockReply, FakeBedrockServer
from fake_openai import FakeOpenAIServer, OpenAIReply

AWS_KEY, AWS_SECRET = "AKIAROUTERTEST0001", "router-test-secret"


@pytest.fixture
def openai_server():
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bedrock_server():
    server = FakeBedrockServer(AWS_KEY, AWS_SECRET)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def proxy(fake_upstream, openai_server, bedrock_server, midway_factory, router_plugin):
    config = {"router": {
        "upstreams": [
            {"name": "anthropic", "url": fake_upstream.url, "keys": ["sk-ant-routed"]},
            {"name": "cheap", "kind": "openai", "url": openai_server.url,
             "keys": ["sk-openai-routed"]},
            {"name": "aws", "kind": "bedrock", "region": "us-east-1", "url": bedrock_server.url,
             "credentials": [{"access_key_id": AWS_KEY, "secret_access_key": AWS_SECRET}],
             "models": {"claude-opus-*": "anthropic.claude-opus-4-8-v1:0"}},
        ],
        "rules": [
            {"name": "background", "match": {"background": True}, "target": "cheap",
             "model": "gpt-fake-1", "fallback": ["anthropic"]},
            {"name": "opus", "match": {"model": "claude-opus-*"}, "target": "aws"},
        ],
        "target": "anthropic", "backoff_base": 0.0}}
    return midway_factory(plugins=[router_plugin], config=config)


def sdk(proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)


def ask(client, model, stream):
    kwargs = {"model": model, "max_tokens": 32,
              "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        with client.messages.stream(**kwargs) as s:
            return s.get_final_message()
    return client.messages.create(**kwargs)


@pytest.mark.parametrize("stream", [False, True])
def test_rules_pick_the_vendor(proxy, fake_upstream, openai_server, bedrock_server, stream):
    client = sdk(proxy)
    haiku = ask(client, "claude-haiku-4-5", stream)
    assert haiku.content[0].text == "Hello from the fake OpenAI upstream."
    sent = openai_server.requests[-1]
    assert sent.body["model"] == "gpt-fake-1"
    assert sent.headers["authorization"] == "Bearer sk-openai-routed"

    opus = ask(client, "claude-opus-4-8", stream)
    assert opus.content[0].text == "Hello from the fake Bedrock."
    assert "anthropic.claude-opus-4-8-v1:0" in bedrock_server.requests[-1].path

    sonnet = ask(client, "claude-sonnet-4-6", stream)
    assert sonnet.content[0].text == "Hello from the fake upstream."
    assert key_of(fake_upstream.messages_requests[-1]) == "sk-ant-routed"
    assert len(fake_upstream.messages_requests) == 1


def test_failing_vendor_falls_back_to_anthropic(proxy, fake_upstream, openai_server):
    openai_server.reply(OpenAIReply(status=500, error={"message": "boom", "type": "server_error"}))
    message = ask(sdk(proxy), "claude-haiku-4-5", True)
    assert message.content[0].text == "Hello from the fake upstream."
    assert len(openai_server.requests) == 1
    # The fallback target has no model rewrite: Anthropic gets the client's model.
    assert fake_upstream.messages_requests[-1].json["model"] == "claude-haiku-4-5"


def test_vendor_error_without_fallback_is_in_anthropic_format(proxy, bedrock_server):
    bedrock_server.reply(BedrockReply(status=400, error_type="ValidationException",
                                      error_message="bad input"))
    with pytest.raises(anthropic.BadRequestError) as info:
        ask(sdk(proxy), "claude-opus-4-8", False)
    assert info.value.body["type"] == "error"
