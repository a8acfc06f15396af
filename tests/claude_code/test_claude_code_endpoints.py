"""Claude Code's other endpoints through the full stack: model discovery and count_tokens."""

from __future__ import annotations

import anthropic
import orjson
import pytest
from cc_support import AUTH_TOKEN, GATEWAY_MODELS, MAPPED_FROM, Claude, Stack, text_reply

from midway.testing import FakeUpstream, wait_for


@pytest.mark.cc_cell(feature="model discovery", format="anthropic", upstream="anthropic")
def test_gateway_model_discovery(claude: Claude, stack: Stack,
                                 fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply(text_reply("discovered"))
    out = claude.run(stack.url, "Hello", "--model", "claude-sonnet-4-6",
                     env={"CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY": "1"}).assert_success()
    assert out["result"] == "discovered"
    models = [r for r in fake_upstream.requests if r.path == "/v1/models"]
    assert [(r.method, r.query) for r in models] == [("GET", "limit=1000")]
    assert models[0].headers["authorization"] == f"Bearer {AUTH_TOKEN}"
    wait_for(lambda: any(x.request.path == "/v1/models" for x in stack.probe.exchanges))
    [listed] = [x for x in stack.probe.exchanges if x.request.path == "/v1/models"]
    assert listed.status == 200


@pytest.mark.cc_cell(feature="model discovery", format="anthropic", upstream="anthropic")
def test_gateway_model_discovery_answered_by_midway(claude: Claude, discovery_stack: Stack,
                                                   fake_upstream: FakeUpstream) -> None:
    # [[models.list]] configured: Claude Code's discovery request is answered by midway from
    # its configuration (the list plus the router's rule that routes a model by name).
    fake_upstream.reply(text_reply("discovered"))
    out = claude.run(discovery_stack.url, "Hello", "--model", "claude-sonnet-4-6",
                     env={"CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY": "1"}).assert_success()
    assert out["result"] == "discovered"
    assert not [r for r in fake_upstream.requests if r.path.startswith("/v1/models")]
    wait_for(lambda: any(x.request.path == "/v1/models" for x in discovery_stack.probe.exchanges))
    [listed] = [x for x in discovery_stack.probe.exchanges if x.request.path == "/v1/models"]
    assert (listed.request.method, listed.request.query_string) == ("GET", "limit=1000")
    assert (listed.status, listed.answered_by) == (200, "midway.models")
    assert listed.timings.total_ms is not None and listed.timings.total_ms < 3000
    received = orjson.loads(listed.response_body or b"")
    assert [(m["id"], m["display_name"], m["description"]) for m in received["data"]] == [
        *[(m["id"], m["display_name"], m["description"]) for m in GATEWAY_MODELS],
        (MAPPED_FROM, MAPPED_FROM, "")]  # the router's rename rule, by its model name
    assert received["has_more"] is False


@pytest.mark.cc_cell(feature="count_tokens", format="anthropic", upstream="anthropic")
def test_count_tokens_is_forwarded(stack: Stack, fake_upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=stack.url, auth_token=AUTH_TOKEN, max_retries=0)
    counted = client.beta.messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "Hello there"}],
        betas=["claude-code-20250219"], extra_query={"beta": "true"})  # as Claude Code sends it
    [sent] = fake_upstream.requests
    assert (sent.path, sent.query) == ("/v1/messages/count_tokens", "beta=true")
    assert sent.headers["anthropic-beta"].startswith("claude-code-20250219")
    assert counted.input_tokens == max(1, len(sent.body) // 4)
    wait_for(lambda: len(stack.probe.exchanges) == 1)
    [seen] = stack.probe.exchanges
    assert seen.status == 200
    assert seen.annotations["cost_usd"] == "0"  # counting tokens is free
