"""Microsoft Foundry and Claude Platform on AWS upstreams: both speak Anthropic's format;
what differs is where (Foundry's /anthropic base path, AWS's regional host) and how they are
authenticated (Foundry's api-key beside x-api-key; AWS's anthropic-workspace-id on every
request)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import pytest

from midway.config import ConfigError
from midway.testing import FakeUpstream, RunningMidway
from midway_router.settings import parse

FOUNDRY_KEY, AWS_KEY = "foundry-key-0001", "aws-workspace-key-0001"


def routed(midway_factory: Callable[..., RunningMidway], router_plugin: Any,
           upstream: dict[str, Any]) -> anthropic.Anthropic:
    proxy = midway_factory(plugins=[router_plugin], config={"router": {
        "upstreams": [upstream], "target": upstream["name"]}})
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-client", max_retries=0)


def ask(client: anthropic.Anthropic) -> Any:
    return client.messages.create(model="claude-sonnet-4-5", max_tokens=5,
                                  messages=[{"role": "user", "content": "hi"}])


def test_claude_platform_on_aws_gets_its_workspace_on_every_request(
        midway_factory: Callable[..., RunningMidway], router_plugin: Any,
        fake_upstream: FakeUpstream) -> None:
    client = routed(midway_factory, router_plugin, {
        "name": "aws", "kind": "aws", "url": fake_upstream.url, "keys": [AWS_KEY],
        "workspace": "wrkspc_01abc"})
    assert ask(client).content[0].type == "text"
    client.messages.count_tokens(model="claude-sonnet-4-5",
                                 messages=[{"role": "user", "content": "hi"}])
    for seen in fake_upstream.requests[-2:]:
        assert seen.headers["anthropic-workspace-id"] == "wrkspc_01abc"
        assert seen.headers["x-api-key"] == AWS_KEY
        assert "sk-ant-client" not in repr(dict(seen.headers))


def test_foundry_keeps_its_base_path_and_gets_both_key_headers(
        midway_factory: Callable[..., RunningMidway], router_plugin: Any,
        fake_upstream: FakeUpstream) -> None:
    client = routed(midway_factory, router_plugin, {
        "name": "foundry", "kind": "foundry", "url": f"{fake_upstream.url}/anthropic",
        "keys": [FOUNDRY_KEY]})
    with pytest.raises(anthropic.NotFoundError):  # the fake serves no /anthropic prefix
        ask(client)
    seen = fake_upstream.requests[-1]
    assert seen.path == "/anthropic/v1/messages"
    assert seen.headers["x-api-key"] == seen.headers["api-key"] == FOUNDRY_KEY
    assert "anthropic-workspace-id" not in seen.headers


def test_platform_settings() -> None:
    aws = parse({"upstreams": [{"name": "a", "kind": "aws", "region": "us-west-2",
                                "keys": ["env:K"], "workspace": "wrkspc_1"}]}).upstreams[0]
    assert aws.url == "https://aws-external-anthropic.us-west-2.api.aws"
    with pytest.raises(ConfigError, match="needs workspace"):
        parse({"upstreams": [{"name": "a", "kind": "aws", "region": "us-west-2",
                              "keys": ["env:K"]}]})
    with pytest.raises(ConfigError, match="needs its url"):
        parse({"upstreams": [{"name": "f", "kind": "foundry", "keys": ["env:K"]}]})
    with pytest.raises(ConfigError, match="needs keys"):
        parse({"upstreams": [{"name": "f", "kind": "foundry",
                              "url": "https://r.services.ai.azure.com/anthropic"}]})
