"""The real Claude Code CLI in its Vertex and Bedrock modes (CLAUDE_CODE_USE_VERTEX=1 /
CLAUDE_CODE_USE_BEDROCK=1, with their SKIP_*_AUTH switches) through midway with a midway key in
ANTHROPIC_CUSTOM_HEADERS, to an Anthropic upstream: a tool loop with signed thinking completes,
the upstream sees Messages requests with midway's key, billing's cost equals Claude Code's."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from cc_support import (
    COST,
    FORMATS,
    MARKER,
    MODELS,
    SIGNATURE,
    TEAM_KEY,
    THINKING,
    UPSTREAM_KEY,
    Claude,
    Stack,
    messages_since,
    tool_loop_replies,
)
from fake_bedrock import BedrockReply, FakeBedrockServer
from fake_vertex import FakeGoogle

from midway.testing import FakeUpstream

LOOP = ("tool loop", "signed thinking", COST)


@pytest.mark.parametrize("fmt", [
    pytest.param(fmt, marks=pytest.mark.cc_cell(feature=LOOP, format=fmt, upstream="anthropic"))
    for fmt in sorted(FORMATS)])
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


def run_tool_loop(claude: Claude, stack: Stack, fmt: str) -> dict[str, Any]:
    env = {**FORMATS[fmt](stack.url),
           "ANTHROPIC_CUSTOM_HEADERS": f"x-api-key: {TEAM_KEY['key']}"}
    out = claude.run(stack.url, "Print the marker", "--allowedTools", "Bash(echo:*)",
                     "--model", MODELS[fmt], env=env,
                     unset=("ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN")).assert_success()
    assert out["result"] == f"The command printed {MARKER}."
    seen = [e for e in stack.probe.messages() if e.client_format == fmt]
    assert len(seen) >= 2 and all(e.principal.name == "alice" for e in seen)
    billed = sum(Decimal(e.annotations["cost_usd"]) for e in seen)
    assert abs(billed - Decimal(str(out["total_cost_usd"]))) < Decimal("1e-9")
    return out


@pytest.mark.cc_cell(feature=LOOP, format="vertex", upstream="vertex")
def test_vertex_format_to_a_vertex_upstream(claude: Claude, vertex_stack: Stack,
                                            google: FakeGoogle) -> None:
    google.anthropic.reply(*tool_loop_replies())
    run_tool_loop(claude, vertex_stack, "vertex")
    first, second = [r for r in google.requests if "count-tokens" not in r.path][-2:]
    for sent in (first, second):
        assert sent.path.endswith("/models/claude-sonnet-4-5@20250929:streamRawPredict")
        assert sent.headers["authorization"].removeprefix("Bearer ") in google.issued
        assert TEAM_KEY["key"] not in str(dict(sent.headers))
    thinking = second.body["messages"][-2]["content"][0]
    assert thinking == {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}


@pytest.mark.cc_cell(feature=LOOP, format="bedrock", upstream="bedrock")
def test_bedrock_format_to_a_bedrock_upstream(claude: Claude, bedrock_stack: Stack,
                                              bedrock: FakeBedrockServer) -> None:
    turn_one, turn_two = tool_loop_replies()
    bedrock.fake.reply(BedrockReply(content=turn_one.content, stop_reason="tool_use",
                                    usage=turn_one.usage),
                       BedrockReply(content=turn_two.content, usage=turn_two.usage))
    run_tool_loop(claude, bedrock_stack, "bedrock")
    first, second = bedrock.fake.requests[-2:]
    for sent in (first, second):
        assert sent.signature_ok  # signed by midway; Claude Code sent no signature at all
        assert sent.path == f"/model/{MODELS['bedrock']}/invoke-with-response-stream"
        assert TEAM_KEY["key"] not in str(dict(sent.headers))
    thinking = second.body["messages"][-2]["content"][0]
    assert thinking == {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}
