"""The Sessions pages against a real Claude Code session: the CLI spawns a subagent through
midway, then the session is resumed on another model (the prompt cache breaks there); the
dashboard's pages, opened in Debian's chromium, show the turns, the subagent with its own
cost and the break with its cause. Screenshots: artifacts/screenshots/cc-sessions*.png."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cc_support import TEAM_KEY, UPSTREAM_KEY, Claude, Stack, text_reply
from conftest import _stack, plugin_config
from openai_upstream import OpenAIUpstream

from midway.testing import FakeUpstream, PromptCache, RecordedRequest, Reply
from midway_dashboard.testing import browser, screenshot_dir

ROOT = Path(__file__).resolve().parents[2]
FIRST = "Ask a subagent to check the repository."
SECOND = "Anything else to check?"
MAIN_MODEL, OTHER_MODEL = "claude-sonnet-4-6", "claude-haiku-4-5"
ADMIN = "adm-sessions-5e4d3c2b1a"


@pytest.fixture
def dashboard_stack(fake_upstream: FakeUpstream, openai_upstream: OpenAIUpstream,
                    tmp_path: Path) -> Iterator[Stack]:
    """The team setup (Claude Code presents alice's midway key), every plugin, and the
    dashboard behind an admin key."""
    config = plugin_config(fake_upstream.url, openai_upstream.url)
    config["midway"].update(client_keys=[TEAM_KEY], upstream_api_key=UPSTREAM_KEY,
                            admin_key=ADMIN)
    config["midway"]["plugins"].append("dashboard")
    config["router"]["upstreams"][0]["keys"] = [UPSTREAM_KEY]
    yield from _stack(tmp_path, config)


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("text", "")) for b in content or [] if isinstance(b, dict))


def scripted(cache: PromptCache) -> Any:
    """The upstream's side of the session, with usage as a prompt cache would report it."""
    def reply(request: RecordedRequest) -> Reply:
        body: dict[str, Any] = orjson.loads(request.body)
        usage = cache.usage(body)
        if request.headers.get("x-claude-code-agent-id"):
            return text_reply("The subagent looked: all clear.", usage=usage)
        tools = [t.get("name") for t in body.get("tools") or []]
        last = _text(body["messages"][-1])
        if SECOND in last:
            return text_reply("Nothing else: the repository is fine.", usage=usage)
        if len(body["messages"]) == 1 and FIRST in last:
            tool = "Agent" if "Agent" in tools else "Task"
            return Reply(content=[{"type": "tool_use", "id": "toolu_01SessionsSpawn0001",
                                   "name": tool, "input": {
                                       "description": "Check the repository",
                                       "prompt": "Say all clear.",
                                       "subagent_type": "general-purpose"}}], usage=usage)
        return text_reply("The subagent says all clear.", usage=usage)
    return reply


@pytest.mark.cc_cell(feature="session views", format="anthropic", upstream="anthropic")
def test_sessions_pages_show_a_real_session(claude: Claude, dashboard_stack: Stack,
                                            fake_upstream: FakeUpstream) -> None:
    stack = dashboard_stack
    fake_upstream.fake.default = scripted(PromptCache())
    alice = {"ANTHROPIC_AUTH_TOKEN": TEAM_KEY["key"]}
    first = claude.run(stack.url, FIRST, "--model", MAIN_MODEL, home="home-session", env=alice)
    out = first.assert_success()
    assert out["result"] == "The subagent says all clear."
    session_id = out["session_id"]
    second = claude.run(stack.url, SECOND, "--resume", session_id, "--model", OTHER_MODEL,
                        home="home-session", keep_home=True, env=alice).assert_success()
    assert second["result"] == "Nothing else: the repository is fine."
    sent = fake_upstream.messages_requests
    # Claude Code kept its session id across --resume: one session, a subagent in it.
    assert {r.headers.get("x-claude-code-session-id") for r in sent} == {session_id}
    agents = {r.headers.get("x-claude-code-agent-id") for r in sent} - {None}
    assert len(agents) == 1
    [agent] = agents
    stack.probe.wait(len(sent))
    billing = stack.service("billing")
    found = stack.midway.call(billing.session(session_id))
    assert found is not None and found["turns"] == len(sent)
    # midway's cost of the session is Claude Code's own (a resumed run reports the whole
    # session's; exact decimals here, float sums in Claude Code).
    assert Decimal(str(second["total_cost_usd"])) > Decimal(str(out["total_cost_usd"]))
    claude_code = Decimal(str(second["total_cost_usd"]))
    assert abs(Decimal(found["cost_usd"]) - claude_code) < Decimal("1e-12")

    with browser() as chromium:
        context = chromium.new_context(viewport={"width": 1400, "height": 1000})
        try:
            _check_pages(context, stack, session_id, agent, found)
        finally:
            context.close()


def _usd(value: str) -> str:
    """As the page writes an amount (fmt.usd)."""
    n = float(value)
    return f"${n:.4f}" if abs(n) < 1 and n != 0 else f"${n:.2f}"


def _check_pages(context: Any, stack: Stack, session_id: str, agent: str,
                 found: dict[str, Any]) -> None:
    shots = screenshot_dir(ROOT)
    base = f"{stack.url}/_midway"
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)

    # Every user's sessions are behind the admin key: alice's own key opens nothing.
    for path in ("/api/claude-sessions", f"/api/claude-sessions/{session_id}"):
        assert httpx.get(f"{base}{path}").status_code == 401
        assert httpx.get(f"{base}{path}", headers={"x-api-key": TEAM_KEY["key"]}
                         ).status_code == 401
    page.goto(f"{base}/sessions")
    assert page.title() == "midway · Log in"
    page.fill("input[name=key]", ADMIN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/sessions")
    assert problems == ["console error: Failed to load resource: the server responded with a "
                        "status of 401 (Unauthorized)"]  # the login form's own status
    problems.clear()
    row = page.locator("table.sessions tbody tr", has_text=session_id)
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    # session, user, team, start, duration, turns, subagents, tokens, cost, cache read, errors
    assert cells[1:3] == ["alice", "search"]
    assert cells[5] == str(found["turns"]) and cells[6] == "1"
    assert cells[8] == _usd(found["cost_usd"]) and cells[10] == "0"
    assert cells[9] == f"{found['cache_read_share'] * 100:.1f} %"
    page.screenshot(path=shots / "cc-sessions.png", full_page=True)
    # Filtered to another team, the session is not there.
    page.goto(f"{base}/sessions?team=platform")
    page.wait_for_selector("table.sessions td.empty")
    assert session_id not in page.inner_text("#sessions")
    page.goto(f"{base}/sessions?team=search")
    row.wait_for()

    row.locator("a").click()
    page.wait_for_url(f"{base}/sessions/{session_id}")
    page.wait_for_selector("table.turns tbody tr")
    assert page.inner_text("#turns .value") == str(found["turns"])
    assert page.inner_text("#cost .value") == _usd(found["cost_usd"])
    turns = page.locator("table.turns tbody tr")
    assert turns.count() == found["turns"]
    # The turns' costs add up to the session's (to the picodollar, in the page's own data).
    api = httpx.get(f"{base}/api/claude-sessions/{session_id}",
                    headers={"authorization": f"Bearer {ADMIN}"}).json()["session"]
    assert sum(Decimal(t["cost_usd"]) for t in api["timeline"]) == Decimal(api["cost_usd"])
    assert [t["turn"] for t in api["timeline"]] == list(range(1, found["turns"] + 1))
    # The subagent, with its own cost.
    subagents = page.locator("table.subagents tbody tr", has_text=agent)
    own = next(a for a in api["subagents"] if a["agent_id"] == agent)["own_cost_usd"]
    assert Decimal(own) == sum(Decimal(t["cost_usd"]) for t in api["timeline"]
                               if t["agent_id"] == agent) > 0
    assert subagents.locator("td").nth(2).inner_text() == _usd(own)
    # The break: the resumed turn on another model read nothing of what the last one cached.
    assert page.inner_text("#cache-breaks .value") == "1"
    breaks = page.locator("table.cache-breaks tbody tr")
    assert breaks.count() == 1
    text = breaks.inner_text()
    assert "model" in text and f"{MAIN_MODEL} -> {OTHER_MODEL}" in text
    last = turns.nth(found["turns"] - 1)
    assert "cache-break" in (last.get_attribute("class") or "")
    assert "broke: model" in last.inner_text() and OTHER_MODEL in last.inner_text()
    assert page.locator("table.turns tr.cache-break").count() == 1
    page.screenshot(path=shots / "cc-session.png", full_page=True)

    # Each turn opens its audit record: the last one's answer.
    last.locator("a").click()
    page.wait_for_selector("#answer")
    assert page.inner_text("#answer") == "Nothing else: the repository is fine."
    assert problems == []
