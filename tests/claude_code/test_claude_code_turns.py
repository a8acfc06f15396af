"""Conversations: a text turn, the tool loop, a session of several MB — through midway."""

from __future__ import annotations

import hashlib

import pytest
from cc_support import (
    MARKER,
    SIGNATURE,
    THINKING,
    TOOL_ID,
    Claude,
    Stack,
    comparable_body,
    messages_since,
    text_reply,
    tool_loop_replies,
    visible,
)

from midway.testing import FakeUpstream

USAGE = {"input_tokens": 110, "cache_creation_input_tokens": 50, "cache_read_input_tokens": 20,
         "output_tokens": 47,
         "cache_creation": {"ephemeral_5m_input_tokens": 50, "ephemeral_1h_input_tokens": 0}}


@pytest.mark.cc_cell(feature=("text turn", "streaming"), format="anthropic",
                     upstream="anthropic")
def test_single_text_turn(claude: Claude, stack: Stack, fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply(text_reply("Hello through midway.", usage=USAGE))
    run = claude.run(stack.url, "Say hello", "--model", "claude-opus-4-8")

    out = run.assert_success()
    assert out["result"] == "Hello through midway."
    assert out["num_turns"] == 1
    for field in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                  "cache_creation_input_tokens"):
        assert out["usage"][field] == USAGE[field]
    # Claude Code's own price for this usage (Opus 4.8: 5 / 6.25 / 0.50 / 25 per MTok).
    assert abs(out["total_cost_usd"] - 0.0020475) < 1e-12

    [sent] = fake_upstream.messages_requests
    assert sent.query == "beta=true"
    body = sent.json
    assert body["stream"] is True and body["model"] == "claude-opus-4-8"
    assert sent.headers["x-claude-code-session-id"] == out["session_id"]

    [seen] = stack.probe.wait(1)
    assert seen.status == 200 and seen.streaming and seen.error is None
    assert seen.stop_reason == "end_turn"
    assert seen.request.body == sent.body  # forwarded byte for byte
    assert (seen.usage.input_tokens, seen.usage.output_tokens,
            seen.usage.cache_read_input_tokens, seen.usage.cache_creation_input_tokens) == \
        (110, 47, 20, 50)


@pytest.mark.cc_cell(feature=("tool loop", "signed thinking"), format="anthropic",
                     upstream="anthropic")
def test_tool_loop_keeps_thinking_and_tool_arguments(claude: Claude, stack: Stack,
                                                     fake_upstream: FakeUpstream) -> None:
    args = ("--allowedTools", "Bash(echo:*)", "--model", "claude-sonnet-4-6")
    fake_upstream.reply(*tool_loop_replies())
    direct = claude.run(fake_upstream.url, "Print the marker", *args)
    direct_requests = messages_since(fake_upstream.requests, 0)
    start = len(fake_upstream.requests)

    fake_upstream.reply(*tool_loop_replies())
    run = claude.run(stack.url, "Print the marker", *args)

    out = run.assert_success()
    assert out["result"] == f"The command printed {MARKER}."
    assert out["num_turns"] == 2
    assert visible(out) == visible(direct.assert_success())

    first, second = messages_since(fake_upstream.requests, start)
    assistant, user = second.json["messages"][-2:]
    assert assistant["role"] == "assistant"
    thinking, tool_use = assistant["content"]
    # The signed thinking block comes back untouched, or the real API would reject the turn.
    assert thinking == {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}
    # The arguments, streamed as five input_json_delta fragments, were reassembled intact.
    assert tool_use == {"type": "tool_use", "id": TOOL_ID, "name": "Bash",
                        "input": {"command": f"echo {MARKER}",
                                  "description": "Print the marker"}}
    [result] = [b for b in user["content"] if b.get("type") == "tool_result"]
    assert result["tool_use_id"] == TOOL_ID
    assert MARKER in str(result["content"]) and result.get("is_error") is False
    # Claude Code's follow-up request is the same as without midway in the path.
    assert [comparable_body(r, run.home) for r in (first, second)] == \
        [comparable_body(r, direct.home) for r in direct_requests]

    exchanges = stack.probe.wait(2)
    assert [x.stop_reason for x in exchanges] == ["tool_use", "end_turn"]
    assert [x.status for x in exchanges] == [200, 200]
    assert [x.request.body for x in exchanges] == [first.body, second.body]


@pytest.mark.cc_cell(feature="large session (6 MB)", format="anthropic",
                     upstream="anthropic")
def test_large_session_passes_intact(claude: Claude, stack: Stack,
                                     fake_upstream: FakeUpstream) -> None:
    # ~6 MB of distinct lines of multi-byte text (a long pasted log, as in a long session).
    # Claude Code refuses a prompt its own estimate puts beyond the model's context window; the
    # estimate counts characters, so three-byte characters make a large body that it accepts.
    lines = [f"{i:06d} " + "".join(chr(0x4E00 + (i * 31 + j) % 20000) for j in range(30))
             for i in range(60_000)]
    prompt = "Summarise this log:\n" + "\n".join(lines)
    assert len(prompt.encode()) > 5_000_000
    fake_upstream.reply(text_reply("Summary: 60000 lines."))
    run = claude.run(stack.url, None, "--model", "claude-opus-5-5", stdin=prompt)

    out = run.assert_success()
    assert out["result"] == "Summary: 60000 lines."
    [sent] = fake_upstream.messages_requests
    assert len(sent.body) > 5_000_000
    texts = [block.get("text", "") for message in sent.json["messages"]
             if isinstance(message["content"], list) for block in message["content"]]
    assert any(lines[0] in t and lines[-1] in t and "\n".join(lines) in t for t in texts)
    [seen] = stack.probe.wait(1)
    assert hashlib.sha256(seen.request.body).digest() == hashlib.sha256(sent.body).digest()
    assert seen.status == 200
