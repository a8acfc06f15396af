"""What Claude Code sends arrives upstream as it was sent: headers, query, credentials."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from cc_support import AUTH_TOKEN, Claude, Stack, comparable_headers, messages_since, text_reply

from midway.testing import FakeUpstream

# X-Midway-Project is billing's project header: the team setup's way to attribute spend.
CUSTOM_HEADERS = "X-Team: platform\nX-Midway-Project: midway-conformance"


@pytest.mark.cc_cell(feature="headers unchanged", format="anthropic", upstream="anthropic")
def test_headers_and_query_arrive_unchanged(claude: Claude, stack: Stack,
                                            fake_upstream: FakeUpstream) -> None:
    env = {"ANTHROPIC_CUSTOM_HEADERS": CUSTOM_HEADERS}
    args = ("--model", "claude-sonnet-4-6")
    fake_upstream.reply(text_reply("direct"))
    direct = claude.run(fake_upstream.url, "Hello", *args, env=env)
    [direct_sent] = messages_since(fake_upstream.requests, 0)
    start = len(fake_upstream.requests)

    fake_upstream.reply(text_reply("through midway"))
    run = claude.run(stack.url, "Hello", *args, env=env)

    out = run.assert_success()
    assert direct.assert_success()["result"] == "direct"
    assert out["result"] == "through midway"
    [sent] = messages_since(fake_upstream.requests, start)
    assert sent.query == "beta=true"
    headers = sent.headers
    assert headers["anthropic-version"] == "2023-06-01"
    betas = [b.strip() for b in headers["anthropic-beta"].split(",")]
    assert "claude-code-20250219" in betas and len(betas) > 3
    assert headers["x-claude-code-session-id"] == out["session_id"]
    assert headers["x-team"] == "platform"
    assert headers["x-midway-project"] == "midway-conformance"
    assert headers["authorization"] == f"Bearer {AUTH_TOKEN}"
    assert headers["user-agent"].startswith("claude-cli/")
    # Every end-to-end header, beta list included, is exactly what Claude Code sends directly.
    assert sorted(comparable_headers(sent).items()) == \
        sorted(comparable_headers(direct_sent).items())

    [seen] = stack.probe.wait(1)
    assert seen.request.query_string == "beta=true"
    assert seen.request.headers["x-team"] == "platform"
    # The custom header attributed the request's cost to the project.
    assert seen.annotations["billing"]["project"] == "midway-conformance"
    [row] = stack.midway.call(stack.service("billing").report("project"))
    assert row["project"] == "midway-conformance"
    assert row["cost_usd"] == seen.annotations["cost_usd"] != "0"


@pytest.mark.cc_cell(feature="project attribution", format="anthropic", upstream="anthropic")
def test_repository_settings_attribute_spend_to_a_project(claude: Claude, stack: Stack,
                                                          fake_upstream: FakeUpstream) -> None:
    # A repository's checked-in .claude/settings.json names its project for everyone.
    settings = claude.workdir / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps(
        {"env": {"ANTHROPIC_CUSTOM_HEADERS": "X-Midway-Project: search-ranking"}}))
    fake_upstream.reply(text_reply("attributed"))
    out = claude.run(stack.url, "Hello", "--model", "claude-sonnet-4-6").assert_success()

    assert out["result"] == "attributed"
    [sent] = fake_upstream.messages_requests
    assert sent.headers["x-midway-project"] == "search-ranking"
    [seen] = stack.probe.wait(1)
    assert seen.annotations["billing"]["project"] == "search-ranking"
    cost = Decimal(seen.annotations["cost_usd"])
    assert cost > 0 and abs(cost - Decimal(str(out["total_cost_usd"]))) < Decimal("1e-12")
