"""The team setup: Claude Code presents a midway key; Anthropic only ever sees midway's key."""

from __future__ import annotations

from decimal import Decimal

import pytest
from cc_support import TEAM_KEY, UPSTREAM_KEY, Claude, Stack, text_reply

from midway.testing import FakeUpstream


@pytest.mark.cc_cell(feature="team keys", format="anthropic", upstream="anthropic")
def test_midway_key_in_claude_code_team_setup(claude: Claude, team_stack: Stack,
                                              fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply(text_reply("Hello, alice."))
    out = claude.run(team_stack.url, "Hello", "--model", "claude-sonnet-4-6",
                     env={"ANTHROPIC_AUTH_TOKEN": TEAM_KEY["key"]}).assert_success()
    assert out["result"] == "Hello, alice."

    [sent] = fake_upstream.messages_requests
    assert sent.headers["x-api-key"] == UPSTREAM_KEY
    assert "authorization" not in sent.headers
    assert TEAM_KEY["key"] not in str(dict(sent.headers))
    [seen] = team_stack.probe.wait(1)
    assert (seen.principal.name, seen.principal.team) == ("alice", "search")
    assert seen.annotations["billing"]["team"] == "search"
    [record] = team_stack.audit_records(1)
    assert record["principal_name"] == "alice" and record["team"] == "search"
    [row] = team_stack.midway.call(team_stack.service("billing").report("team"))
    assert row["team"] == "search"
    assert abs(Decimal(row["cost_usd"]) - Decimal(str(out["total_cost_usd"]))) < \
        Decimal("1e-9")

