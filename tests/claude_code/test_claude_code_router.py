"""The router sends Claude Code to an OpenAI-compatible vendor; Claude Code cannot tell."""

from __future__ import annotations

from cc_support import AUTH_TOKEN, MARKER, OPENAI_MODEL, ROUTE_HEADER, Claude, Stack
from openai_upstream import ChatReply, OpenAIUpstream

from midway.testing import FakeUpstream


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
