"""The router sends Claude Code to an OpenAI-compatible vendor; Claude Code cannot tell."""

from __future__ import annotations

from decimal import Decimal

import pytest
from cc_support import (
    AUTH_TOKEN,
    MAPPED_FROM,
    MAPPED_TO,
    MARKER,
    OPENAI_MODEL,
    ROUTE_HEADER,
    Claude,
    Stack,
    text_reply,
)
from openai_upstream import ChatReply, OpenAIUpstream

from midway.testing import FakeUpstream


@pytest.mark.cc_cell(feature=("tool loop", "streaming"), format="anthropic", upstream="openai")
def test_routed_to_openai_completes_the_tool_loop(claude: Claude, stack: Stack,
                                                  fake_upstream: FakeUpstream,
                                                  openai_upstream: OpenAIUpstream) -> None:
    openai_upstream.reply(
        ChatReply(tool="Bash", arguments={"command": f"echo {MARKER}",
                                          "description": "Print the marker"}, fragments=5),
        ChatReply(text=f"The command printed {MARKER}."))
    run = claude.run(stack.url, "Print the marker", "--allowedTools", "Bash(echo:*)",
                     "--model", "claude-sonnet-4-6",
                     env={"ANTHROPIC_CUSTOM_HEADERS": f"{ROUTE_HEADER}: openai"})

    out = run.assert_success()
    assert out["result"] == f"The command printed {MARKER}."
    assert out["num_turns"] == 2
    assert fake_upstream.messages_requests == []  # nothing went to Anthropic

    first, second = openai_upstream.requests
    for request in (first, second):
        assert request.body["model"] == OPENAI_MODEL
        assert request.body["stream"] is True
        # The vendor's key from the router's pool, never Claude Code's credential.
        assert request.headers["authorization"] == "Bearer sk-openai-conformance"
        assert AUTH_TOKEN not in str(dict(request.headers))
    assert any(t.get("function", {}).get("name") == "Bash" for t in first.body["tools"])
    # Claude Code got the call (streamed as argument fragments) as a complete Bash tool_use,
    # ran it, and its tool_result went back to the vendor as a tool message.
    [call] = [m for m in second.body["messages"] if m.get("tool_calls")][-1]["tool_calls"]
    assert call["function"]["name"] == "Bash"
    assert '"command":' in call["function"]["arguments"] and MARKER in \
        call["function"]["arguments"]
    [tool_message] = [m for m in second.body["messages"] if m.get("role") == "tool"]
    assert tool_message["tool_call_id"] == call["id"]
    assert MARKER in str(tool_message["content"])

    exchanges = stack.probe.wait(2)
    assert [x.annotations.get("route") for x in exchanges] == ["to-openai", "to-openai"]
    assert [x.stop_reason for x in exchanges] == ["tool_use", "end_turn"]
    assert [x.upstream.name for x in exchanges if x.upstream] == ["openai", "openai"]


@pytest.mark.cc_cell(feature="model mapping", format="anthropic", upstream="anthropic")
def test_model_mapping_is_billed_at_the_model_used(claude: Claude, stack: Stack,
                                                   fake_upstream: FakeUpstream) -> None:
    usage = {"input_tokens": 1000, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0, "output_tokens": 100}
    fake_upstream.reply(text_reply("mapped", usage=usage))
    out = claude.run(stack.url, "Hello", "--model", MAPPED_FROM).assert_success()

    assert out["result"] == "mapped"
    [sent] = fake_upstream.messages_requests
    assert sent.json["model"] == MAPPED_TO
    [seen] = stack.probe.wait(1)
    assert seen.annotations["route"] == "opus-to-sonnet"
    # Claude Code prices what it asked for (Opus 4.7: $5 / $25 per MTok); midway records what
    # was used (Sonnet 4.6: $3 / $15).
    assert abs(Decimal(str(out["total_cost_usd"])) - Decimal("0.0075")) < Decimal("1e-12")
    assert seen.annotations["billing"]["model"] == MAPPED_TO
    assert Decimal(seen.annotations["cost_usd"]) == Decimal("0.0045")
