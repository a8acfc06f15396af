"""The real Claude Code CLI in its Vertex and Bedrock modes (CLAUDE_CODE_USE_VERTEX=1 /
CLAUDE_CODE_USE_BEDROCK=1, with their SKIP_*_AUTH switches) through midway with a midway key in
ANTHROPIC_CUSTOM_HEADERS, to an Anthropic upstream: a tool loop with signed thinking completes,
the upstream sees Messages requests with midway's key, billing's cost equals Claude Code's."""

from __future__ import annotations

from decimal import Decimal

import pytest
from cc_support import (
    MARKER,
    SIGNATURE,
    TEAM_KEY,
    THINKING,
    UPSTREAM_KEY,
    Claude,
    Stack,
    messages_since,
    tool_loop_replies,
)

from midway.testing import FakeUpstream

FORMATS = {
    "vertex": lambda url: {"CLAUDE_CODE_USE_VERTEX": "1", "CLAUDE_CODE_SKIP_VERTEX_AUTH": "1",
                           "ANTHROPIC_VERTEX_BASE_URL": f"{url}/v1",
                           "ANTHROPIC_VERTEX_PROJECT_ID": "cc-project",
                           "CLOUD_ML_REGION": "us-east5"},
    "bedrock": lambda url: {"CLAUDE_CODE_USE_BEDROCK": "1", "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1",
                            "ANTHROPIC_BEDROCK_BASE_URL": url, "AWS_REGION": "us-east-1"},
}
MODELS = {"vertex": "claude-sonnet-4-5@20250929",
          "bedrock": "us.anthropic.claude-sonnet-4-5-20250929-v1:0"}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_tool_loop_in_a_cloud_format(claude: Claude, team_stack: Stack,
                                       fake_upstream: FakeUpstream, fmt: str) -> None:
    start = len(fake_upstream.requests)
    fake_upstream.reply(*tool_loop_replies())
    env = {**FORMATS[fmt](team_stack.url),
           "ANTHROPIC_CUSTOM_HEADERS": f"x-api-key: {TEAM_KEY['key']}"}
    run = claude.run(team_stack.url, "Print the marker", "--allowedTools", "Bash(echo:*)",
                     "--model", MODELS[fmt], env=env, unset=("ANTHROPIC_BASE_URL",
                                                             "ANTHROPIC_AUTH_TOKEN"))
    out = run.assert_success()
    assert out["result"] == f"The command printed {MARKER}."
    first, second = [r for r in messages_since(fake_upstream.requests, start)
                     if r.path == "/v1/messages"][-2:]
    for sent in (first, second):
        assert sent.headers["x-api-key"] == UPSTREAM_KEY
        assert TEAM_KEY["key"] not in str(dict(sent.headers))
        assert sent.json["model"] == "claude-sonnet-4-5-20250929"
        assert "anthropic_version" not in sent.json and "anthropic_beta" not in sent.json
    thinking = second.json["messages"][-2]["content"][0]
    assert thinking == {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}
    seen = [e for e in team_stack.probe.messages() if e.client_format == fmt]
    assert len(seen) >= 2 and all(e.principal.name == "alice" for e in seen)
    billed = sum(Decimal(e.annotations["cost_usd"]) for e in seen)
    assert abs(billed - Decimal(str(out["total_cost_usd"]))) < Decimal("1e-9")
