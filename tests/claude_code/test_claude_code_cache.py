"""The exact cache: a hit replays a stream that Claude Code accepts as the real answer."""

from __future__ import annotations

import pytest
from cc_support import (
    MARKER,
    SIGNATURE,
    THINKING,
    Claude,
    Stack,
    text_reply,
    tool_loop_replies,
    visible,
)

from midway.testing import FakeUpstream

ANSWER = "Cached answer: the build uses hatchling."


@pytest.mark.cc_cell(feature="cache replay", format="anthropic", upstream="anthropic")
def test_cache_hit_replays_a_stream_claude_code_accepts(claude: Claude, stack: Stack,
                                                       fake_upstream: FakeUpstream) -> None:
    usage = {"input_tokens": 900, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0, "output_tokens": 20}
    fake_upstream.reply(text_reply(ANSWER, usage=usage, text_chunks=5))
    fake_upstream.reply(text_reply("the upstream must not be asked twice"))
    args = ("What does the build use?", "--model", "claude-sonnet-4-6")
    # Same HOME path (emptied): the second session sends the same request as the first.
    first = claude.run(stack.url, *args, home="home-cached")
    second = claude.run(stack.url, *args, home="home-cached")

    out = second.assert_success()
    assert out["result"] == ANSWER
    assert visible(out) == visible(first.assert_success())
    assert len(fake_upstream.messages_requests) == 1

    miss, hit = stack.probe.wait(2)
    assert (miss.annotations["cache"], hit.annotations["cache"]) == ("miss", "hit")
    assert hit.answered_by is not None and hit.status == 200 and hit.streaming
    assert hit.stop_reason == "end_turn" and hit.usage.output_tokens == 20
    # A hit is not spend: billing charges nothing for it.
    assert hit.annotations["cost_usd"] == "0"


@pytest.mark.cc_cell(feature="cache replay", format="anthropic", upstream="anthropic")
def test_cached_tool_loop_replays_thinking_and_tool_calls(claude: Claude, stack: Stack,
                                                         fake_upstream: FakeUpstream) -> None:
    replies = tool_loop_replies()
    fake_upstream.reply(*replies, replies[1])
    args = ("Print the marker", "--allowedTools", "Bash(echo:*)", "--model", "claude-sonnet-4-6")
    first = claude.run(stack.url, *args, home="home-cached").assert_success()
    # The same session again: the first turn (thinking + tool call) comes from the cache.
    second = claude.run(stack.url, *args, home="home-cached").assert_success()

    assert visible(second) == visible(first)
    assert second["result"] == f"The command printed {MARKER}."
    exchanges = stack.probe.wait(4)
    assert [x.annotations["cache"] for x in exchanges] == ["miss", "miss", "hit", "miss"]
    assert [x.stop_reason for x in exchanges] == ["tool_use", "end_turn"] * 2
    # Claude Code took the replayed turn as real: it ran the tool and sent back the signed
    # thinking block and the tool call with their content intact. (The cache gives a replayed
    # tool call a fresh id, so this follow-up is new to the cache and goes upstream.)
    upstream = fake_upstream.messages_requests
    assert len(upstream) == 3
    assistant, user = upstream[2].json["messages"][-2:]
    thinking, tool_use = assistant["content"]
    assert thinking == {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}
    assert (tool_use["name"], tool_use["input"]) == \
        ("Bash", {"command": f"echo {MARKER}", "description": "Print the marker"})
    [result] = [b for b in user["content"] if b.get("type") == "tool_result"]
    assert result["tool_use_id"] == tool_use["id"] and MARKER in str(result["content"])
