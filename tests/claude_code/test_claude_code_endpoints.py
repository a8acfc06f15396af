"""Claude Code's other endpoints through the full stack: model discovery and count_tokens."""

from __future__ import annotations

import anthropic
from cc_support import AUTH_TOKEN, Claude, Stack, text_reply

from midway.testing import FakeUpstream, wait_for


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
