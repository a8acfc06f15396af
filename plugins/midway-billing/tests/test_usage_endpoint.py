"""``GET /api/oauth/usage`` (docs/billing.md, "What a developer sees"): each person's own spend
limits in the shape Claude Code's ``/usage`` reads from a gateway, authenticated by the
core's ``authenticate`` hook (a signed-in person's token or a midway key)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx
import pytest
from helpers import PLUGIN, billing_of, ledger
from test_spend_limits import (
    CAPPED,
    FREE,
    MAX_TOKENS,
    FakeIdentity,
    config,
    exact_reply,
    set_limit,
)

from midway_billing import spendlimits
from midway_billing.spendlimits import period_window

PATH = "/api/oauth/usage"


def usage(running: Any, token: str | None, header: str = "authorization") -> httpx.Response:
    headers = {} if token is None else \
        {header: f"Bearer {token}" if header == "authorization" else token}
    return httpx.get(f"{running.url}{PATH}", headers=headers)


def spend(running: Any, key: str, n: int = 1, max_tokens: int = MAX_TOKENS) -> None:
    client = anthropic.Anthropic(base_url=running.url, api_key=key, max_retries=0)
    for _ in range(n):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=max_tokens,
                               messages=[{"role": "user", "content": "count me"}])


def resets(period: str) -> str:
    return spendlimits.iso(period_window(period, datetime.now(UTC).timestamp())[1])


def test_each_person_sees_their_own_caps_per_period(midway_factory, fake_upstream) -> None:
    fake_upstream.fake.default = exact_reply
    running = midway_factory(plugins=[PLUGIN, ("idp", FakeIdentity())], config=config())
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "25")  # daily
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "100", "weekly")
    set_limit(running, {"type": "organization"}, "1000", "monthly")
    set_limit(running, {"type": "user", "user_id": "sub-bob"}, "50")  # bob: his own daily
    before = usage(running, "tok-ann")
    assert before.status_code == 200, before.text
    assert before.headers["cache-control"] == "no-store"
    assert before.headers["request-id"].startswith("req_")
    body = before.json()
    assert body["extra_usage"] == {"is_enabled": True, "monthly_limit": 25, "used_credits": 0,
                                   "utilization": 0, "currency": "USD"}
    assert [(x["group"], x["percent"], x["resets_at"], x["severity"]) for x in body["limits"]] \
        == [("daily", 0, resets("daily"), "normal"), ("weekly", 0, resets("weekly"), "normal"),
            ("monthly", 0, resets("monthly"), "normal")]
    spend(running, "tok-ann", 2)  # ~$0.20 of ann's $0.25 a day: 80 %
    ledger(running, 2)
    body = usage(running, "tok-ann").json()
    used = body["extra_usage"]["used_credits"]
    assert 19 <= used <= 21
    daily, weekly, monthly = body["limits"]
    # the binding cap (the fullest) is the active one, and the one extra_usage describes
    assert daily["is_active"] and not weekly["is_active"] and not monthly["is_active"]
    assert body["extra_usage"]["monthly_limit"] == 25
    # used_credits: whole cents spent (floored); utilization: of the exact spend
    assert body["extra_usage"]["utilization"] == daily["percent"]
    assert used * 4 <= daily["percent"] <= (used + 1) * 4
    assert daily["severity"] == "warning" and weekly["severity"] == "normal"
    assert used <= weekly["percent"] <= used + 1
    assert monthly["percent"] == round(used / 1000 * 100)
    # bob (also an intern) has his own daily cap; he spent nothing: ann's spend is not his
    bob = usage(running, "tok-bob").json()
    assert bob["extra_usage"]["monthly_limit"] == 50
    assert bob["extra_usage"]["used_credits"] == 0
    assert [x["percent"] for x in bob["limits"]] == [0, 0, 0]
    # past the cap (a small request is admitted; it costs as much): critical, 100 %+
    spend(running, "tok-ann", 1, max_tokens=100)
    ledger(running, 3)
    over = usage(running, "tok-ann").json()
    assert over["limits"][0]["severity"] == "critical" and over["limits"][0]["percent"] >= 100
    # a midway key works too (any principal the authenticate hook knows)
    ci = usage(running, CAPPED, header="x-api-key")
    assert ci.status_code == 200 and ci.json()["extra_usage"]["monthly_limit"] == 25


def test_without_a_cap_the_spend_per_period_is_shown(midway_factory, fake_upstream) -> None:
    fake_upstream.fake.default = exact_reply
    running = midway_factory(plugins=[PLUGIN, ("idp", FakeIdentity())], config=config())
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "500")
    spend(running, FREE)
    ledger(running, 1)
    body = usage(running, FREE, header="x-api-key").json()
    extra = body["extra_usage"]
    assert extra["monthly_limit"] is None and extra["utilization"] is None
    assert body["limits"] == []
    assert 9 <= extra["used_credits"] <= 11  # ~$0.10 this month
    assert extra["daily"]["used_credits"] == extra["weekly"]["used_credits"] == \
        extra["used_credits"]
    assert extra["daily"]["limit"] is None and extra["weekly"]["limit"] is None


def test_who_may_ask(midway_factory, fake_upstream) -> None:
    running = midway_factory(plugins=[PLUGIN, ("idp", FakeIdentity())], config=config())
    for token in (None, "tok-mallory", "sk-ant-api03-not-a-midway-key"):
        answer = usage(running, token)
        assert answer.status_code == 401, (token, answer.text)
        assert answer.json()["error"]["type"] == "authentication_error"
    # the query does not choose whose usage is read (Claude Code's variants are accepted)
    set_limit(running, {"type": "user", "user_id": "sub-bob"}, "7")
    mine = httpx.get(f"{running.url}{PATH}?skip_spend=1&user=sub-bob&principal=oidc:sub-bob",
                     headers={"authorization": "Bearer tok-ann"}).json()
    assert mine["extra_usage"]["monthly_limit"] is None  # ann has no cap; bob's is not hers
    # only GET; and nothing of it reaches the upstream
    assert httpx.post(f"{running.url}{PATH}", headers={
        "authorization": "Bearer tok-ann"}).status_code in (404, 405)
    assert not [r for r in fake_upstream.requests if "oauth" in r.path]


def test_spend_limits_off_the_path_is_not_served(midway_factory, fake_upstream) -> None:
    running = midway_factory(plugins=[PLUGIN, ("idp", FakeIdentity())],
                             config={"midway": {"client_keys": [{"key": FREE, "name": "f"}]}})
    answer = httpx.get(f"{running.url}{PATH}", headers={"authorization": "Bearer tok-ann"})
    assert answer.status_code == 404  # Claude Code: no spend limit on this gateway
    assert not [r for r in fake_upstream.requests if "oauth" in r.path]


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_store_away_is_a_503_either_way(midway_factory, fake_upstream, postgres_dsn,
                                        pg_schema, mode, caplog) -> None:
    """A store that does not answer within spend_limits_check_timeout: 503 "spend limit
    unavailable" (Claude Code keeps its last reading), fail open or closed alike — nobody
    can say what was spent; then the answer comes back with the store."""
    import asyncpg

    fake_upstream.fake.default = exact_reply
    running = midway_factory(plugins=[PLUGIN, ("idp", FakeIdentity())], config=config(
        store=postgres_dsn, schema=pg_schema, spend_limits_on_store_error=mode,
        spend_limits_check_timeout=0.5))
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "1000")
    spend(running, "tok-ann")
    assert running.call(billing_of(running).flush(30))

    async def lock() -> Any:
        conn = await asyncpg.connect(postgres_dsn, server_settings={"search_path": pg_schema})
        await conn.execute("BEGIN; LOCK TABLE billing_counters IN ACCESS EXCLUSIVE MODE")
        return conn

    conn = running.call(lock())
    try:
        away = usage(running, "tok-ann")
        assert away.status_code == 503, away.text
        assert away.json()["error"]["message"].startswith("spend limit unavailable")
        assert "cannot read a person's usage" in caplog.text
    finally:
        running.call(conn.close())
    back = usage(running, "tok-ann")
    assert back.status_code == 200 and back.json()["extra_usage"]["used_credits"] >= 9
