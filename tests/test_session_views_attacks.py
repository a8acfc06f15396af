"""Attacks on the session views (issue #23 item 5) through one midway with audit, billing and
the dashboard behind an admin key: a client may name any session id, as many as it likes, and
put what it wants in them; none of it may show it another user's sessions, plant a cache break
in them, hide among them, or grow a page without bound."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest

import midway_audit
import midway_billing
import midway_dashboard
from midway.testing import (
    FakeUpstream,
    PromptCache,
    RecordedRequest,
    Reply,
    RunningMidway,
    wait_for,
)

ADMIN = "adm-session-views-7c6b5a49"
ALICE = {"key": "mw-alice-sessions-0001", "name": "alice", "team": "search"}
MALLORY = {"key": "mw-mallory-sessions-0002", "name": "mallory", "team": "red"}
SESSION = "5d2e8f3a-1b4c-4d6e-8f7a-9b0c1d2e3f4a"
SYSTEM = [{"type": "text", "text": "You are a coding agent."}]
FIRST = {"role": "user", "content": "Fix the build"}


@pytest.fixture
def gateway(midway_factory: Callable[..., RunningMidway], fake_upstream: FakeUpstream,
            monkeypatch: pytest.MonkeyPatch) -> RunningMidway:
    monkeypatch.setenv("MIDWAY_TEST_SESSIONS_ADMIN", ADMIN)
    cache = PromptCache()

    def reply(request: RecordedRequest) -> Reply:
        return Reply(content=[{"type": "text", "text": "ok"}], usage=cache.usage(request.json))

    fake_upstream.fake.default = reply
    return midway_factory(
        plugins=[("audit", midway_audit), ("billing", midway_billing),
                 ("dashboard", midway_dashboard)],
        config={"midway": {"client_keys": [ALICE, MALLORY]}, "audit": {}},
        admin_key="env:MIDWAY_TEST_SESSIONS_ADMIN")


def client(gateway: RunningMidway, who: dict[str, str], session: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=who["key"], max_retries=0,
                               default_headers={"x-claude-code-session-id": session})


def conversation(turns: int) -> list[Any]:
    messages: list[Any] = [FIRST]
    for i in range(1, turns):
        messages += [{"role": "assistant", "content": "ok"},
                     {"role": "user", "content": f"step {i}"}]
    return messages


def ask(c: anthropic.Anthropic, model: str, turns: int, start: int = 1) -> None:
    for n in range(start, turns + 1):
        c.messages.create(model=model, max_tokens=20, system=SYSTEM, messages=conversation(n))


def admin(gateway: RunningMidway, path: str) -> Any:
    response = httpx.get(f"{gateway.url}/_midway/api/{path}",
                         headers={"authorization": f"Bearer {ADMIN}"})
    return response.status_code, response.json()


def test_a_client_cannot_read_plant_or_flood_session_views(gateway: RunningMidway) -> None:
    alice = client(gateway, ALICE, SESSION)
    ask(alice, "claude-sonnet-4-6", 3)
    # Mallory names alice's session id and sends a longer conversation with the same first
    # message on another model: were her turn compared with alice's, a break would show
    # there (and at alice's next turn).
    client(gateway, MALLORY, SESSION).messages.create(
        model="claude-haiku-4-5", max_tokens=20, system=SYSTEM, messages=conversation(6))
    ask(alice, "claude-sonnet-4-6", 4, start=4)
    # A session id that is markup is no session id: recorded as none.
    ask(client(gateway, MALLORY, '"><img src=x onerror=alert(1)>'), "claude-haiku-4-5", 1)
    # 30 made-up sessions, to bury alice's.
    for i in range(30):
        ask(client(gateway, MALLORY, f"flood-{i:03d}"), "claude-haiku-4-5", 1)

    billing = gateway.midway.services["billing"]
    # Settled after the client has its last byte.
    wait_for(lambda: len(rows := gateway.call(billing.store.rows())) == 36 and
             all(r["state"] == "settled" for r in rows))

    # Her own key opens no session view, not even of the sessions she named.
    base = f"{gateway.url}/_midway"
    for path in ("/api/claude-sessions", f"/api/claude-sessions/{SESSION}",
                 "/api/claude-sessions/flood-000", "/sessions", f"/sessions/{SESSION}"):
        for headers in ({"x-api-key": MALLORY["key"]},
                        {"authorization": f"Bearer {MALLORY['key']}"}, {}):
            assert httpx.get(base + path, headers=headers).status_code == 401, (path, headers)

    code, found = admin(gateway, f"claude-sessions/{SESSION}")
    session = found["session"]
    assert code == 200 and session["turns"] == 5 and session["principals"] == 2
    assert session["cache_breaks"] == 0, [t["cache_break"] for t in session["timeline"]]
    # The search team's view of the session holds alice's turns only.
    _, listed = admin(gateway, "claude-sessions?team=search")
    [own] = listed["sessions"]
    assert (own["session_id"], own["turns"], own["principals"]) == (SESSION, 4, 1)
    assert own["cache_read_share"] > 0.5

    # The flood is bounded per page and said to be there; the markup made no session.
    code, page = admin(gateway, "claude-sessions?limit=10")
    assert code == 200 and len(page["sessions"]) == 10 and page["more"] is True
    _, everything = admin(gateway, "claude-sessions?limit=500")
    ids = [s["session_id"] for s in everything["sessions"]]
    assert len(ids) == 31 and SESSION in ids and not [i for i in ids if "<" in i]
    assert admin(gateway, "claude-sessions?limit=100000")[0] == 200  # capped at 500
