"""What midway records about a Claude Code session: billing's cost equals Claude Code's own."""

from __future__ import annotations

from decimal import Decimal

from cc_support import MARKER, Claude, Stack, tool_loop_replies

from midway.testing import FakeUpstream

# Two turns with every kind of input token: plain, cache writes (5 min and 1 h), cache reads.
TURN_USAGE = [
    {"input_tokens": 1200, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 8000,
     "output_tokens": 64,
     "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000}},
    {"input_tokens": 30, "cache_creation_input_tokens": 400, "cache_read_input_tokens": 11000,
     "output_tokens": 12,
     "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 0}},
]


def _tool_loop(claude: Claude, stack: Stack, fake: FakeUpstream, model: str) -> dict:
    replies = tool_loop_replies()
    for reply, usage in zip(replies, TURN_USAGE, strict=True):
        reply.usage = usage
    fake.reply(*replies)
    run = claude.run(stack.url, "Print the marker", "--allowedTools", "Bash(echo:*)",
                     "--model", model)
    out = run.assert_success()
    assert out["result"] == f"The command printed {MARKER}."
    return out


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
