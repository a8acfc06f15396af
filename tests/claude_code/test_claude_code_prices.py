"""midway's price of each answer equals Claude Code's own (``total_cost_usd``), for every
scenario of billing's price table (plugins/midway-billing/tests/test_scenarios.py) that the CLI
can express: a model chosen with ``--model`` and the usage a fake upstream reports.

Not expressible here, so covered by the table test only: fast mode and ``inference_geo`` (the
CLI decides what it sends), interrupted streams (the CLI retries or fails), batches, dated rate
changes, and unknown models (Claude Code prices them at its default model's rates; midway at
the catalogue's unknown-model tier, on purpose). One expressible scenario differs, on
purpose: the long-context premium (see the last test).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from cc_support import Claude, Stack, text_reply

from midway.testing import FakeUpstream


def usage(inp: int, out: int, w5: int = 0, w1: int = 0, read: int = 0,
          searches: int = 0) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "input_tokens": inp, "output_tokens": out, "cache_creation_input_tokens": w5 + w1,
        "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
        "cache_read_input_tokens": read}
    if searches:
        fields["server_tool_use"] = {"web_search_requests": searches}
    return fields


MIX = usage(1200, 700, w5=300, w1=200, read=5000)
# Every catalogue model but three: claude-opus-4-7 (the conformance stack's router maps it to
# Sonnet 4.6, which then serves and is priced), and claude-3-opus and claude-3-haiku, which
# Claude Code 2.1.331 does not know (dated ids too): it prices them at its default model's
# rates, as it does unknown models.
MODELS = [
    "claude-opus-4-5", "claude-opus-4-6", "claude-opus-4-8", "claude-opus-5",
    "claude-opus-5-5", "claude-opus-4-1", "claude-opus-4-0",
    "claude-sonnet-4-0", "claude-sonnet-4-5", "claude-sonnet-4-6", "claude-3-7-sonnet",
    "claude-3-5-sonnet", "claude-sonnet-5", "claude-sonnet-5-5", "claude-haiku-4-5",
    "claude-3-5-haiku", "claude-haiku-5-5", "claude-fable-5",
    "claude-fable-5-1", "claude-fable-5-2", "claude-mythos-5", "claude-mythos-5-1",
    "claude-mythos-5-2",
]
SCENARIOS: list[tuple[str, str, dict[str, Any]]] = [
    *[(model, model, MIX) for model in MODELS],
    ("dated id", "claude-sonnet-4-5-20250929", MIX),
    ("1h cache writes", "claude-opus-4-8", usage(10, 5, w1=9000)),
    ("web search", "claude-sonnet-4-6", usage(900, 300, searches=3)),
    ("haiku 5.5 at 100K", "claude-haiku-5-5", usage(60_000, 5000, read=40_000)),
    ("haiku 5.5 above 100K", "claude-haiku-5-5", usage(60_000, 5000, read=40_001)),
    # without the 1M-context beta no long-context tier applies, for either
    ("sonnet 4.5 above 200K, no 1M beta", "claude-sonnet-4-5", usage(150_000, 2000, read=50_001)),
    ("sonnet 4.5[1m] at 200K", "claude-sonnet-4-5[1m]", usage(150_000, 2000, read=50_000)),
]


@pytest.mark.cc_cell(feature="prices of every model", format="anthropic", upstream="anthropic")
@pytest.mark.parametrize(("name", "model", "reported"), SCENARIOS,
                         ids=[s[0] for s in SCENARIOS])
def test_midways_price_is_claude_codes(claude: Claude, stack: Stack,
                                       fake_upstream: FakeUpstream, name: str, model: str,
                                       reported: dict[str, Any]) -> None:
    fake_upstream.reply(text_reply("priced.", usage=reported))
    out = claude.run(stack.url, f"Say 'priced.' ({name})", "--model", model).assert_success()
    [exchange] = stack.probe.wait(1)
    billing = exchange.annotations["billing"]
    assert billing["unpriced"] is False
    ours = Decimal(exchange.annotations["cost_usd"])
    theirs = Decimal(str(out["total_cost_usd"]))
    assert ours > 0
    # Claude Code adds floats; midway counts exact decimals.
    assert abs(ours - theirs) < Decimal("1e-9"), (name, billing["rule"], ours, theirs)


@pytest.mark.cc_cell(feature="prices of every model", format="anthropic", upstream="anthropic")
def test_long_context_premium_claude_code_does_not_charge(claude: Claude, stack: Stack,
                                                          fake_upstream: FakeUpstream) -> None:
    """Sonnet 4.5 with the 1M-context beta and a prompt over 200K tokens: Anthropic's pricing
    page charges $6 / $22.50 per MTok for the whole request, and so does midway; Claude Code
    2.1.331 sends the beta but counts its standard $3 / $15. A known difference, pinned here
    so that a Claude Code that starts charging it is noticed."""
    reported = usage(150_000, 2000, read=50_001)
    fake_upstream.reply(text_reply("priced.", usage=reported))
    out = claude.run(stack.url, "Say 'priced.' (1M)", "--model",
                     "claude-sonnet-4-5[1m]").assert_success()
    [exchange] = stack.probe.wait(1)
    assert "context-1m-2025-08-07" in exchange.request.headers["anthropic-beta"]
    assert exchange.annotations["billing"]["rule"] == "catalogue;tier>200000"
    premium = (150_000 * Decimal(6) + 50_001 * Decimal("0.60") + 2000 * Decimal("22.50")) / 10**6
    standard = (150_000 * Decimal(3) + 50_001 * Decimal("0.30") + 2000 * Decimal(15)) / 10**6
    assert Decimal(exchange.annotations["cost_usd"]) == premium
    assert abs(Decimal(str(out["total_cost_usd"])) - standard) < Decimal("1e-9")
