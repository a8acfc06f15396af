"""What midway records about a Claude Code session: billing's cost equals Claude Code's own,
audit holds one record per request with the reassembled answer."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from cc_support import (
    COST,
    DEFAULT_MODEL,
    MARKER,
    SIGNATURE,
    THINKING,
    TOOL_ID,
    Claude,
    Stack,
    tool_loop_replies,
)

from midway.testing import FakeUpstream

# Two turns with every kind of input token: plain, cache writes (5 min and 1 h), cache reads.
TURN_USAGE: list[dict[str, Any]] = [
    {"input_tokens": 1200, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 8000,
     "output_tokens": 64,
     "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000}},
    {"input_tokens": 30, "cache_creation_input_tokens": 400, "cache_read_input_tokens": 11000,
     "output_tokens": 12,
     "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 0}},
]


def _tool_loop(claude: Claude, stack: Stack, fake: FakeUpstream, model: str | None
               ) -> dict[str, Any]:
    """The tool loop with TURN_USAGE; ``model`` None: Claude Code's default model."""
    replies = tool_loop_replies()
    for reply, usage in zip(replies, TURN_USAGE, strict=True):
        reply.usage = usage
    fake.reply(*replies)
    args = ["--allowedTools", "Bash(echo:*)"] + (["--model", model] if model else [])
    out = claude.run(stack.url, "Print the marker", *args).assert_success()
    assert out["result"] == f"The command printed {MARKER}."
    return out


@pytest.mark.cc_cell(feature=COST, format="anthropic", upstream="anthropic")
def test_billing_cost_equals_claude_codes_own(claude: Claude, stack: Stack,
                                              fake_upstream: FakeUpstream) -> None:
    out = _tool_loop(claude, stack, fake_upstream, "claude-opus-4-8")
    exchanges = stack.probe.wait(2)

    costs = [Decimal(x.annotations["cost_usd"]) for x in exchanges]
    assert all(c > 0 for c in costs)
    claude_code = Decimal(str(out["total_cost_usd"]))
    # Claude Code adds floats; midway counts exact decimals.
    assert abs(sum(costs) - claude_code) < Decimal("1e-12"), (costs, claude_code)
    for exchange, usage in zip(exchanges, TURN_USAGE, strict=True):
        assert exchange.annotations["billing"]["unpriced"] is False
        assert exchange.usage.cache_creation_1h_input_tokens == \
            usage["cache_creation"]["ephemeral_1h_input_tokens"]

    [row] = stack.midway.call(stack.service("billing").report("model"))
    assert row["model"] == "claude-opus-4-8"
    assert abs(Decimal(row["cost_usd"]) - claude_code) < Decimal("1e-9")


@pytest.mark.cc_cell(feature=("default model", COST), format="anthropic", upstream="anthropic")
def test_billing_prices_claude_codes_default_model(claude: Claude, stack: Stack,
                                                   fake_upstream: FakeUpstream) -> None:
    out = _tool_loop(claude, stack, fake_upstream, None)

    # If a new Claude Code defaults to another model, price it in conftest's billing table.
    assert list(out["modelUsage"]) == [DEFAULT_MODEL]
    assert {r.json["model"] for r in fake_upstream.messages_requests} == {DEFAULT_MODEL}
    exchanges = stack.probe.wait(2)
    assert [x.annotations["billing"]["unpriced"] for x in exchanges] == [False, False]
    total = sum(Decimal(x.annotations["cost_usd"]) for x in exchanges)
    assert abs(total - Decimal(str(out["total_cost_usd"]))) < Decimal("1e-12")


@pytest.mark.cc_cell(feature="audit", format="anthropic", upstream="anthropic")
def test_audit_one_record_per_request_with_reassembled_answer(claude: Claude, stack: Stack,
                                                             fake_upstream: FakeUpstream
                                                             ) -> None:
    out = _tool_loop(claude, stack, fake_upstream, "claude-sonnet-4-6")
    exchanges = stack.probe.wait(2)
    audit = stack.service("audit")
    records = stack.audit_records(2)
    assert [r["id"] for r in records] == [x.id for x in exchanges]
    assert [r["stop_reason"] for r in records] == ["tool_use", "end_turn"]
    assert [r["status"] for r in records] == [200, 200]
    for record, exchange in zip(records, exchanges, strict=True):
        assert record["path"] == "/v1/messages?beta=true"
        assert record["model"] == "claude-sonnet-4-6" and record["streaming"] is True
        assert record["request_headers"]["x-claude-code-session-id"] == out["session_id"]
        assert "authorization" not in record["request_headers"]  # credentials never stored
        assert record["cost_usd"] == exchange.annotations["cost_usd"]
        assert record["upstream_request_id"] == exchange.upstream_request_id
    assert sum(Decimal(r["cost_usd"]) for r in records) == \
        sum(Decimal(x.annotations["cost_usd"]) for x in exchanges)

    first, second = (stack.midway.call(audit.get(x.id)) for x in exchanges)
    # The streamed answer, reassembled: signed thinking and the tool call's joined arguments.
    answer = json.loads(first["response_body"])
    assert answer["content"] == [
        {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE},
        {"type": "tool_use", "id": TOOL_ID, "name": "Bash",
         "input": {"command": f"echo {MARKER}", "description": "Print the marker"}}]
    assert answer["stop_reason"] == "tool_use"
    assert answer["usage"]["cache_read_input_tokens"] == TURN_USAGE[0]["cache_read_input_tokens"]
    final = json.loads(second["response_body"])
    assert final["content"] == [{"type": "text", "text": out["result"]}]
    request = json.loads(second["request_body"])
    assert request["messages"][-2]["content"][0]["signature"] == SIGNATURE
