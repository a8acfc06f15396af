"""Spend limits (docs/billing.md, "Spend limits"): resolution, the headers Claude Code reads,
the billing_error refusal, the Admin-API-shaped endpoints, no overshoot under concurrency on
SQLite and PostgreSQL, and the store going away (fail open / fail closed)."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from helpers import PLUGIN, billing_of, ledger

from midway.exchange import Principal
from midway.testing import RecordedRequest, Reply
from midway_billing import spendlimits
from midway_billing.spendlimits import (
    LimitTable,
    SpendLimit,
    SpendLimitError,
    Standing,
    parse_request,
    period_window,
    unified_headers,
)

ADMIN = "mw-admin-key-for-spend-limits-000000"
CAPPED = "mk-capped-ci-key"  # a CI key in the "interns" group
FREE = "mk-free-key"  # no groups
KEYS = [{"key": CAPPED, "name": "ci-bot", "team": "search", "groups": ["interns", "eng"]},
        {"key": FREE, "name": "free", "team": "search"}]
MAX_TOKENS = 6600  # × $15/MTok (Sonnet output) ≈ $0.10 per request
U = "anthropic-ratelimit-unified-"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def limit(scope_type: str, scope_id: str, amount: int | None, period: str = "daily",
          n: int = 0) -> SpendLimit:
    return SpendLimit(f"spl_{scope_type}{scope_id}{period}", scope_type, scope_id, amount,
                      period, float(n), float(n))


# -- units ------------------------------------------------------------------------------------


def test_periods_are_utc_calendar_windows() -> None:
    now = ts("2026-08-07T15:30:00")  # a Friday
    assert period_window("daily", now) == (ts("2026-08-07T00:00:00"), ts("2026-08-08T00:00:00"))
    assert period_window("weekly", now) == (ts("2026-08-03T00:00:00"),
                                            ts("2026-08-10T00:00:00"))  # Monday to Monday
    assert period_window("monthly", ts("2026-12-31T23:59:59")) == (
        ts("2026-12-01T00:00:00"), ts("2027-01-01T00:00:00"))
    monday = ts("2026-08-10T00:00:00")
    assert period_window("weekly", monday)[0] == monday


def test_resolution_user_then_groups_then_organisation() -> None:
    table = LimitTable([limit("organization", "", 1000), limit("rbac_group", "interns", 300),
                        limit("rbac_group", "eng", 500), limit("rbac_group", "ml", 300),
                        limit("user", "alice", 2000),
                        limit("user", "bob", None),  # bob: explicitly unlimited
                        limit("rbac_group", "interns", 50, "monthly")])
    now = ts("2026-08-07T12:00:00")

    def cap(p: Principal, period: str = "daily") -> tuple[int | None, str | None, str | None]:
        c = table.resolve(p, period, now)
        return c.amount, c.scope_type, c.scope_id

    intern = Principal(id="key-1", name="x", kind="key", groups=("eng", "interns"))
    assert cap(intern) == (300, "rbac_group", "interns")  # the most restrictive group
    assert cap(intern, "monthly") == (50, "rbac_group", "interns")
    assert cap(intern, "weekly") == (None, None, None)  # no limit in that period
    assert cap(Principal(id="key-2", name="y", kind="key", groups=("eng",))) == \
        (500, "rbac_group", "eng")
    assert cap(Principal(id="key-3", name="z", kind="key")) == (1000, "organization", "")
    alice = Principal(id="oidc:alice", name="Alice", kind="oidc", subject="alice",
                      groups=("interns",))
    assert cap(alice) == (2000, "user", "alice")  # the user's own limit wins, even if higher
    assert cap(Principal(id="bob", name="bob", kind="key", groups=("interns",))) == \
        (None, "user", "bob")
    # a key named like a signed-in subject is not that person
    assert cap(Principal(id="key-4", name="alice", kind="key", subject="alice")) == \
        (1000, "organization", "")
    # equal caps: the group named first; "max": the most generous
    tie = Principal(id="k", name="k", kind="key", groups=("ml", "interns"))
    assert cap(tie) == (300, "rbac_group", "interns")
    table.group_mode = "max"
    assert cap(intern) == (500, "rbac_group", "eng")
    assert table.caps(Principal(id="bob", name="bob", kind="key"), now) == []


def test_headers_say_allowed_warning_and_rejected_as_claude_code_reads_them() -> None:
    now = ts("2026-08-07T12:00:00")
    cap = spendlimits.Cap("daily", 1000, "rbac_group", "interns", "spl_x",
                          *period_window("daily", now))
    cent = spendlimits.PUSD_PER_CENT

    def at(cents: float) -> dict[str, str]:
        return unified_headers(Standing(cap, int(cents * cent)), now)

    low = at(500)
    assert low[U + "status"] == "allowed" and low[U + "overage-status"] == "allowed"
    assert low[U + "overage-utilization"] == "0.5"
    assert low[U + "reset"] == low[U + "overage-reset"] == str(int(ts("2026-08-08T00:00:00")))
    assert low[U + "representative-claim"] == "overage"
    assert U + "overage-surpassed-threshold" not in low
    warn = at(800)
    assert warn[U + "status"] == "allowed_warning" and warn[U + "overage-utilization"] == "0.8"
    assert warn[U + "overage-surpassed-threshold"] == "0.75"
    assert at(960)[U + "overage-surpassed-threshold"] == "0.95"
    assert at(999.9)[U + "overage-utilization"] == "0.99"  # never 1 while under the cap
    over = at(1000)
    assert over[U + "status"] == "rejected" and over[U + "overage-period"] == "daily"
    assert over[U + "overage-disabled-reason"] == "org_spend_cap_reached"
    assert over["retry-after"] == str(12 * 3600)
    assert spendlimits.refusal_message(cap) == \
        "spend limit reached (daily; resets 2026-08-08 00:00 UTC)"


@pytest.mark.parametrize("body,error", [
    ([], "JSON object"),
    ({"amount": "1"}, "scope: Required"),
    ({"scope": {"type": "team"}, "amount": "1"}, "scope.type"),
    ({"scope": {"type": "user"}, "amount": "1"}, "scope.user_id"),
    ({"scope": {"type": "user", "user_id": "a", "rbac_group_id": "b"}, "amount": "1"},
     "scope.rbac_group_id: Extra"),
    ({"scope": {"type": "organization"}}, "amount: Required"),
    ({"scope": {"type": "organization"}, "amount": 100}, "whole-number"),
    ({"scope": {"type": "organization"}, "amount": "1.50"}, "whole-number"),
    ({"scope": {"type": "organization"}, "amount": "-1"}, "whole-number"),
    ({"scope": {"type": "organization"}, "amount": "1" * 19}, "whole-number"),
    ({"scope": {"type": "organization"}, "amount": "1", "period": "yearly"}, "period"),
    ({"scope": {"type": "organization"}, "amount": "1", "currency": "EUR"}, "currency"),
    ({"scope": {"type": "organization"}, "amount": "1", "pooled": True}, "pooled: Extra"),
])
def test_bad_requests_are_named(body: Any, error: str) -> None:
    with pytest.raises(SpendLimitError, match=error):
        parse_request(body)


# -- through midway ---------------------------------------------------------------------------


def config(**billing: Any) -> dict[str, Any]:
    return {"midway": {"client_keys": KEYS, "admin_key": ADMIN},
            "billing": {"spend_limits": True, "reserve_output_tokens": MAX_TOKENS, **billing}}


def admin(running: Any, method: str, path: str = "", body: Any = None,
          key: str = ADMIN, **params: Any) -> httpx.Response:
    url = f"{running.url}/v1/organizations/spend_limits{path}"
    response = httpx.request(method, url, json=body, params=params,
                             headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
    assert response.headers["request-id"].startswith("req_")  # on every answer
    return response


def set_limit(running: Any, scope: dict[str, Any], amount: str | None,
              period: str = "daily") -> dict[str, Any]:
    response = admin(running, "POST", body={"scope": scope, "amount": amount,
                                            "period": period})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def exact_reply(rec: RecordedRequest) -> Reply:
    # usage equal to billing's estimate: settling never frees room, the counts are exact
    return Reply(usage={"input_tokens": math.ceil(len(rec.body) / 3),
                        "output_tokens": MAX_TOKENS}, delay=0.01,
                 headers={U + "status": "rejected", U + "5h-utilization": "0.99",
                          U + "reset": "1"})


def body_cost() -> Decimal:
    size = len(orjson.dumps({"max_tokens": MAX_TOKENS, "messages": [
        {"role": "user", "content": "count me"}], "model": "claude-sonnet-4-6"}))
    return Decimal(math.ceil(size / 3) * 3 + MAX_TOKENS * 15) / 10**6


async def fire(url: str, key: str, n: int) -> list[int]:
    client = anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0)

    async def one() -> int:
        try:
            await client.messages.create(model="claude-sonnet-4-6", max_tokens=MAX_TOKENS,
                                         messages=[{"role": "user", "content": "count me"}])
            return 200
        except anthropic.APIStatusError as exc:
            return exc.status_code

    try:
        return list(await asyncio.gather(*[one() for _ in range(n)]))
    finally:
        await client.close()


def test_admin_api_lifecycle_audited_and_never_forwarded(midway_factory, fake_upstream) -> None:
    running = midway_factory(plugins=[PLUGIN], config=config())
    # only midway's admin key: no key, a client key, a wrong key are 401 in Anthropic's shape
    for key in ("", CAPPED, "sk-ant-admin01-wrong"):
        refused = admin(running, "GET", key=key)
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
    org = set_limit(running, {"type": "organization"}, "1000")
    assert org["type"] == "spend_limit" and org["id"].startswith("spl_")
    assert (org["scope"], org["amount"], org["currency"], org["period"]) == \
        ({"type": "organization"}, "1000", "USD", "daily")
    group = set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "300")
    again = set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "250")
    assert again["id"] == group["id"] and again["amount"] == "250"  # replaced, same id
    user = set_limit(running, {"type": "user", "user_id": "free"}, None, "monthly")
    assert user["amount"] is None

    listed = admin(running, "GET").json()
    assert [d["id"] for d in listed["data"]] == [org["id"], group["id"], user["id"]]
    assert listed["has_more"] is False and listed["first_id"] == org["id"]
    page = admin(running, "GET", limit=1, after_id=org["id"]).json()
    assert [d["id"] for d in page["data"]] == [group["id"]] and page["has_more"] is True
    back = admin(running, "GET", before_id=user["id"]).json()
    assert [d["id"] for d in back["data"]] == [org["id"], group["id"]]
    only = admin(running, "GET", scope_type="rbac_group").json()
    assert [d["id"] for d in only["data"]] == [group["id"]]
    assert admin(running, "GET", f"/{group['id']}").json()["amount"] == "250"
    for params, status in (({"limit": "0"}, 400), ({"limit": "x"}, 400),
                           ({"scope_type": "team"}, 400), ({"after_id": "spl_nope"}, 400),
                           ({"after_id": org["id"], "before_id": org["id"]}, 400)):
        bad = admin(running, "GET", **params)
        assert bad.status_code == status and bad.json()["type"] == "error"
    assert admin(running, "GET", "/spl_missing").status_code == 404
    assert admin(running, "PATCH", f"/{org['id']}").status_code == 404
    assert admin(running, "POST", body={"scope": {"type": "x"}}).status_code == 400

    # a request from the capped key: its groups are recorded, /effective shows its cap
    client = anthropic.Anthropic(base_url=running.url, api_key=CAPPED, max_retries=0)
    client.messages.create(model="claude-haiku-4-5", max_tokens=5,
                           messages=[{"role": "user", "content": "x"}])
    ledger(running, 1)
    effective = admin(running, "GET", "/effective", **{"user_ids[]": "ci-bot",
                                                       "period[]": "daily"}).json()
    (row,) = effective["data"]
    assert row["type"] == "effective_spend_limit" and row["groups"] == ["eng", "interns"]
    assert row["amount"] == "250" and row["spend_limit_id"] == group["id"]
    assert row["source"] == {"type": "rbac_group", "rbac_group_id": "interns"}
    assert Decimal(row["period_to_date_spend"]) > 0
    everyone = admin(running, "GET", "/effective").json()["data"]
    assert {(r["scope"]["user_id"], r["period"]) for r in everyone} == \
        {("ci-bot", p) for p in ("daily", "weekly", "monthly")}

    deleted = admin(running, "DELETE", f"/{user['id']}")
    assert deleted.json() == {"type": "spend_limit_deleted", "id": user["id"]}
    assert admin(running, "DELETE", f"/{user['id']}").status_code == 404
    audit = admin(running, "GET", "/audit").json()
    actions = [(e["action"], e["target_id"]) for e in audit["data"]]
    assert actions == [("spend_limit.delete", user["id"]), ("spend_limit.upsert", user["id"]),
                       ("spend_limit.upsert", group["id"]), ("spend_limit.upsert", group["id"]),
                       ("spend_limit.upsert", org["id"])]
    assert all(e["type"] == "audit_event" and e["actor"].startswith("admin-key:")
               and ADMIN not in e["actor"] for e in audit["data"])
    replaced = audit["data"][2]
    assert replaced["before"]["amount"] == "300" and replaced["after"]["amount"] == "250"
    older = admin(running, "GET", "/audit", limit=2, after_id=audit["data"][1]["id"]).json()
    assert [e["id"] for e in older["data"]] == [e["id"] for e in audit["data"][2:4]]
    # nothing of this reached the upstream, whatever the spelling
    for path in ("/", "/effective/", "/../spend_limits"):
        admin(running, "GET", path)
    for raw in ("/v1//organizations/spend_limits", "/V1/organizations/spend_limits",
                "/v1/organizations/spend%5Flimits", "/v1/organizations/spend_limits/",
                "/v1/organizations/spend_limits//audit"):
        answer = httpx.get(running.url + raw, headers={"x-api-key": ADMIN})
        # refused as a spelling (400), or served here (request-id): never sent upstream
        assert answer.status_code == 400 or "request-id" in answer.headers, raw
    assert not [r for r in fake_upstream.requests if "organizations" in r.path]


def test_spend_limits_off_changes_nothing(midway_factory, fake_upstream) -> None:
    running = midway_factory(plugins=[PLUGIN], config={"midway": {"client_keys": KEYS}})
    fake_upstream.fake.default = exact_reply
    client = anthropic.Anthropic(base_url=running.url, api_key=CAPPED, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert raw.headers[U + "status"] == "rejected"  # the upstream's own, untouched


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_burst_at_the_cap_never_overshoots(midway_factory, fake_upstream, backend,
                                                      request) -> None:
    fake_upstream.fake.default = exact_reply
    per_request = body_cost()
    assert Decimal("0.096") < per_request < Decimal("0.104")
    extra: dict[str, Any] = {}
    if backend == "postgresql":
        extra = {"store": request.getfixturevalue("postgres_dsn"),
                 "schema": request.getfixturevalue("pg_schema")}
    running = midway_factory(plugins=[PLUGIN], config=config(**extra))
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "105")  # $1.05
    # another period, another scope: the free key may spend nothing this week
    set_limit(running, {"type": "user", "user_id": "free"}, "0", "weekly")
    statuses = asyncio.run(fire(running.url, CAPPED, 40))
    assert statuses.count(200) == 10 and statuses.count(429) == 30, statuses
    rows = ledger(running, 40)
    spent = Decimal(sum(r["cost_pusd"] for r in rows)) / 10**12
    assert spent == per_request * 10 <= Decimal("1.05")
    assert asyncio.run(fire(running.url, FREE, 3)) == [429, 429, 429]


def test_refusal_headers_and_count_tokens(midway_factory, fake_upstream) -> None:
    fake_upstream.fake.default = exact_reply
    running = midway_factory(plugins=[PLUGIN], config=config())
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "25")  # $0.25
    client = anthropic.Anthropic(base_url=running.url, api_key=CAPPED, max_retries=0)
    first = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=MAX_TOKENS,
        messages=[{"role": "user", "content": "count me"}])
    # the upstream's shared-quota headers are gone; the developer's own are there
    assert first.headers[U + "status"] == "allowed"
    assert first.headers[U + "overage-utilization"] == "0"
    assert U + "5h-utilization" not in first.headers
    ledger(running, 1)
    second = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=MAX_TOKENS,
        messages=[{"role": "user", "content": "count me"}])
    assert second.headers[U + "overage-utilization"] == "0.4"  # $0.10 of $0.25
    ledger(running, 2)
    third = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": "x"}])
    assert third.headers.get(U + "status") == "allowed_warning", dict(third.headers)
    assert third.headers[U + "overage-surpassed-threshold"] == "0.75"
    ledger(running, 3)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=MAX_TOKENS,
                               messages=[{"role": "user", "content": "count me"}])
    response = info.value.response
    body = response.json()
    reset = datetime.fromtimestamp(period_window("daily", datetime.now(UTC).timestamp())[1],
                                   UTC)
    assert body["error"] == {"type": "billing_error", "message":
                             f"spend limit reached (daily; resets {reset:%Y-%m-%d} 00:00 UTC)"}
    assert response.headers["x-should-retry"] == "false"
    assert 0 < int(response.headers["retry-after"]) <= 86400
    assert response.headers[U + "status"] == "rejected"
    assert response.headers[U + "overage-period"] == "daily"
    # count_tokens is never blocked
    counted = httpx.post(f"{running.url}/v1/messages/count_tokens",
                         headers={"x-api-key": CAPPED, "anthropic-version": "2023-06-01"},
                         json={"model": "claude-sonnet-4-6",
                               "messages": [{"role": "user", "content": "x"}]})
    assert counted.status_code == 200
    rows = ledger(running, 5)
    assert sum(r["kind"] == "refused" for r in rows) == 1
    # the free key (no group, no org default) is not capped and gets no spend headers
    free = anthropic.Anthropic(base_url=running.url, api_key=FREE, max_retries=0)
    raw = free.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert U + "status" not in raw.headers and U + "5h-utilization" not in raw.headers


def test_streams_and_other_doors_carry_the_users_headers(midway_factory, fake_upstream
                                                         ) -> None:
    fake_upstream.fake.default = exact_reply
    running = midway_factory(plugins=[PLUGIN], config=config())
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "eng"}, "1000", "weekly")
    headers = {"x-api-key": CAPPED, "anthropic-version": "2023-06-01",
               # spoofing: a client's own unified headers and group claims gain nothing
               U + "status": "allowed", U + "overage-utilization": "0",
               "x-midway-groups": "unlimited", "x-groups": "admins"}
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10,
            "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream("POST", f"{running.url}/v1/messages?beta=true", headers=headers,
                      json={**body, "stream": True}) as stream:
        stream.read()
        assert stream.status_code == 200
        assert stream.headers[U + "status"] == "allowed"
        assert stream.headers[U + "reset"] == str(int(period_window(
            "weekly", datetime.now(UTC).timestamp())[1]))
        assert U + "5h-utilization" not in stream.headers
    bedrock_body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
                    "messages": [{"role": "user", "content": "x"}]}
    for path in ("/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke",
                 "/v1/projects/p/locations/us-east5/publishers/anthropic/models/"
                 "claude-sonnet-4-5@20250929:rawPredict"):
        answer = httpx.post(running.url + path, headers={"x-api-key": CAPPED},
                            json={**bedrock_body, "anthropic_version": "vertex-2023-10-16"}
                            if "projects" in path else bedrock_body)
        assert answer.status_code == 200, answer.text
        assert answer.headers[U + "status"] == "allowed"
        assert answer.headers[U + "representative-claim"] == "overage"
    ledger(running, 3)
    # the group cap is per member, not a pool: the other member has its own counter
    assert {r["principal"] for r in ledger(running)} == {"ci-bot"}


def test_a_stream_past_the_cap_is_cut_with_a_billing_error(midway_factory, fake_upstream
                                                           ) -> None:
    long_text = "word " * 4000  # ~20 000 characters: ~5 000 output tokens at the floor
    fake_upstream.fake.default = lambda rec: Reply(
        content=[{"type": "text", "text": long_text}], text_chunks=200,
        usage={"input_tokens": 10, "output_tokens": 5000})
    running = midway_factory(plugins=[PLUGIN], config=config(reserve_output_tokens=100))
    set_limit(running, {"type": "user", "user_id": "ci-bot"}, "2")  # $0.02: ~1300 tokens
    with httpx.stream("POST", f"{running.url}/v1/messages", json={
            "model": "claude-sonnet-4-6", "max_tokens": 8000, "stream": True,
            "messages": [{"role": "user", "content": "x"}]},
            headers={"x-api-key": CAPPED, "anthropic-version": "2023-06-01"}) as stream:
        text = stream.read().decode()
    assert "event: error" in text and "billing_error" in text
    assert "spend limit reached (daily; resets" in text
    (row,) = ledger(running, 1)
    assert row["cost_pusd"] <= 2 * spendlimits.PUSD_PER_CENT * 1.01


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_store_unreachable_fails_open_or_closed(midway_factory, fake_upstream,
                                                private_postgres, mode, caplog) -> None:
    fake_upstream.fake.default = exact_reply
    running = midway_factory(plugins=[PLUGIN], config=config(
        store=private_postgres.dsn, spend_limits_on_store_error=mode, reconcile_interval=0))
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "1000")
    client = anthropic.Anthropic(base_url=running.url, api_key=CAPPED, max_retries=0)
    client.messages.create(model="claude-haiku-4-5", max_tokens=5,
                           messages=[{"role": "user", "content": "x"}])
    ledger(running, 1)
    private_postgres.stop("fast")
    try:
        if mode == "closed":
            with pytest.raises(anthropic.RateLimitError) as info:
                client.messages.create(model="claude-haiku-4-5", max_tokens=5,
                                       messages=[{"role": "user", "content": "x"}])
            error = info.value.response.json()["error"]
            assert error["type"] == "billing_error"
            assert error["message"].startswith("spend limit unavailable")
            assert info.value.response.headers["x-should-retry"] == "false"
            assert info.value.response.headers[U + "overage-disabled-reason"] == "fetch_error"
            assert "refusing capped requests" in caplog.text
        else:
            answer = client.messages.create(model="claude-haiku-4-5", max_tokens=5,
                                            messages=[{"role": "user", "content": "x"}])
            assert answer.content
            assert "letting requests through unchecked" in caplog.text
        down = admin(running, "POST", body={"scope": {"type": "organization"},
                                            "amount": "5"})
        assert down.status_code == 503 and down.json()["error"]["type"] == "api_error"
    finally:
        private_postgres.start()
    billing = billing_of(running)
    if mode == "open":  # its settlement lands once the store is back
        ledger(running, 2)
    assert running.call(billing.flush(30))
    rows = ledger(running)
    # the cap's counter holds exactly what the ledger charged, nothing left reserved
    key = spendlimits.Cap("daily", 1000, None, None, None,
                          *period_window("daily", datetime.now(UTC).timestamp())
                          ).bucket("ci-bot").key
    counters = running.call(billing.store.counters([key]))
    assert counters[key] == (sum(r["cost_pusd"] for r in rows), 0)


def test_cli_sets_lists_explains_and_audits(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from midway.cli import cli

    monkeypatch.setenv("MIDWAY_PLUGINS", "billing")
    toml = tmp_path / "midway.toml"
    toml.write_text("[billing]\nspend_limits = true\n")

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["billing", "spend-limits", *args, "--config",
                                          str(toml), "--data-dir", str(tmp_path / "d")])
        assert result.exit_code == 0, result.output
        return result.output

    out = run("set", "--group", "interns", "--period", "daily", "500")
    limit_id = out.split(":")[0]
    assert limit_id.startswith("spl_") and "group interns, daily: $5.00" in out
    assert "organization, monthly: unlimited" in run("set", "--org", "none")
    assert "interns" in run("list") and limit_id in run("list")
    listed = orjson.loads(run("list", "--json"))
    assert [d["amount"] for d in listed] == ["500", None]
    effective = orjson.loads(run("effective", "nobody", "--json"))
    assert [(d["period"], d["amount"], d["source"]) for d in effective] == [
        ("daily", None, None), ("weekly", None, None),
        ("monthly", None, {"type": "organization"})]
    assert f"deleted {limit_id}" in run("delete", limit_id)
    events = orjson.loads(run("audit", "--json"))
    assert [e["action"] for e in events] == ["spend_limit.delete", "spend_limit.upsert",
                                             "spend_limit.upsert"]
    assert all(e["actor"].startswith("cli:") for e in events)
    bad = CliRunner().invoke(cli, ["billing", "spend-limits", "set", "--user", "a", "--org",
                                   "5", "--config", str(toml)])
    assert bad.exit_code != 0 and "exactly one of" in bad.output
    bad = CliRunner().invoke(cli, ["billing", "spend-limits", "set", "--org", "1.5",
                                   "--config", str(toml), "--data-dir", str(tmp_path / "d")])
    assert bad.exit_code != 0 and "whole-number" in bad.output


def test_every_door_and_spelling_is_capped_and_count_tokens_is_not(midway_factory,
                                                                   fake_upstream) -> None:
    """At a $0 cap no door reaches the upstream: Anthropic (streamed or not, ?beta=true),
    Bedrock invoke and invoke-with-response-stream, Vertex rawPredict and streamRawPredict;
    other spellings of the paths are refused by the core before any hook; count_tokens goes
    through."""
    fake_upstream.fake.default = exact_reply
    running = midway_factory(plugins=[PLUGIN], config=config())
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "eng"}, "0", "monthly")
    key = {"x-api-key": CAPPED, "anthropic-version": "2023-06-01"}
    messages = {"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    bedrock = {"anthropic_version": "bedrock-2023-05-31", **messages}
    vertex = {"anthropic_version": "vertex-2023-10-16", **messages}
    model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    vpath = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5"
    doors = [("/v1/messages", {"model": "claude-sonnet-4-6", **messages}),
             ("/v1/messages?beta=true", {"model": "claude-sonnet-4-6", "stream": True,
                                         **messages}),
             (f"/model/{model}/invoke", bedrock),
             (f"/model/{model}/invoke-with-response-stream", bedrock),
             (f"{vpath}@20250929:rawPredict", vertex),
             (f"{vpath}@20250929:streamRawPredict", {**vertex, "stream": True})]
    for path, body in doors:
        answer = httpx.post(running.url + path, headers=key, json=body)
        assert answer.status_code == 429, (path, answer.text)
        assert answer.json()["error"]["type"] == "billing_error", path
        assert answer.headers["x-should-retry"] == "false"
    for path in ("/v1//messages", "/v1/Messages", "/v1/messages/", "/v1/./messages",
                 "/v1/x/../messages", "/v1/%6Dessages"):
        answer = httpx.post(running.url + path, headers=key,
                            json={"model": "claude-sonnet-4-6", **messages})
        assert answer.status_code in (400, 429), path
    assert fake_upstream.messages_requests == []
    counted = httpx.post(running.url + "/v1/messages/count_tokens", headers=key,
                         json={"model": "claude-sonnet-4-6", **messages})
    assert counted.status_code == 200


def test_a_derived_key_spends_within_its_ancestors_caps(midway_factory, fake_upstream,
                                                        tmp_path) -> None:
    """A key holding keys:create cannot multiply its cap by deriving keys: each derived
    key's spend counts on its parent's cap too."""
    fake_upstream.fake.default = exact_reply
    running = midway_factory(plugins=[PLUGIN], config={
        "midway": {"admin_key": ADMIN},
        "keys": {"enabled": True, "store": str(tmp_path / "keys.db")},
        "billing": {"spend_limits": True, "reserve_output_tokens": MAX_TOKENS}})
    lead = httpx.post(f"{running.url}/_midway/admin/keys", headers={"x-api-key": ADMIN},
                      json={"name": "lead", "groups": ["interns"],
                            "capabilities": ["keys:create"]}).json()
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "25")  # $0.25
    children = [httpx.post(f"{running.url}/_midway/keys", headers={"x-api-key": lead["secret"]},
                           json={"name": f"child{n}"}).json() for n in range(3)]
    assert all(c["groups"] == ["interns"] for c in children)
    statuses = [asyncio.run(fire(running.url, c["secret"], 1))[0] for c in children]
    statuses += asyncio.run(fire(running.url, lead["secret"], 1))
    # each request ~$0.10: two fit in the lead's $0.25, whoever sends them
    assert statuses == [200, 200, 429, 429], statuses


def test_a_client_hanging_up_mid_stream_still_spends_against_its_cap(midway_factory,
                                                                     fake_upstream) -> None:
    """Streaming cut-offs are no way around a cap: a stream the client drops is charged at
    least the floor of the text it received, on the capped user's counter."""
    long_text = "abcd" * 5000  # 20 000 characters: a floor of 5 000 output tokens ($0.075)
    fake_upstream.fake.default = lambda rec: Reply(
        content=[{"type": "text", "text": long_text}], text_chunks=50, delay=0.01,
        usage={"input_tokens": 10, "output_tokens": 5000})
    running = midway_factory(plugins=[PLUGIN], config=config())
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "10")  # $0.10
    received = 0
    with httpx.stream("POST", f"{running.url}/v1/messages", json={
            "model": "claude-sonnet-4-6", "max_tokens": 8000, "stream": True,
            "messages": [{"role": "user", "content": "x"}]},
            headers={"x-api-key": CAPPED, "anthropic-version": "2023-06-01"}) as stream:
        for chunk in stream.iter_bytes():
            received += len(chunk)
            if received > 12_000:  # most of the text, then hang up before message_delta
                break
    (row,) = ledger(running, 1)
    assert "interrupted" in row["pricing_rule"] and row["floor_output_tokens"] >= 2_000
    effective = admin(running, "GET", "/effective", **{"user_ids[]": "ci-bot",
                                                       "period[]": "daily"}).json()["data"]
    spent_cents = Decimal(effective[0]["period_to_date_spend"])
    assert spent_cents == Decimal(row["cost_pusd"]) / spendlimits.PUSD_PER_CENT >= \
        Decimal("3")
    # the next request sees that spend: its standing is past 0
    client = anthropic.Anthropic(base_url=running.url, api_key=CAPPED, max_retries=0)
    fake_upstream.fake.default = lambda rec: Reply(usage={"input_tokens": 1,
                                                          "output_tokens": 1})
    raw = client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert float(raw.headers[U + "overage-utilization"]) >= 0.3


def test_two_postgresql_instances_racing_for_one_cap(midway_factory, fake_upstream,
                                                     postgres_dsn, pg_schema) -> None:
    """Two gateways sharing one PostgreSQL store admit exactly what one cap holds between
    them; a limit set through one is enforced by the other."""
    fake_upstream.fake.default = exact_reply
    shared = config(store=postgres_dsn, schema=pg_schema)
    first = midway_factory(plugins=[PLUGIN], config=shared)
    set_limit(first, {"type": "user", "user_id": "ci-bot"}, "105", "weekly")  # $1.05
    second = midway_factory(plugins=[PLUGIN], config=shared)

    async def both() -> list[int]:
        a, b = await asyncio.gather(fire(first.url, CAPPED, 20), fire(second.url, CAPPED, 20))
        return a + b

    statuses = asyncio.run(both())
    assert statuses.count(200) == 10 and statuses.count(429) == 30, statuses
    assert len(fake_upstream.messages_requests) == 10


def test_defaults_are_announced_at_start_up(midway_factory) -> None:
    import midway_billing

    on = midway_factory(plugins=[PLUGIN], config={"billing": {"spend_limits": True}})
    text = midway_billing.describe(on.midway)
    assert "spend limits ON" in text
    assert "store unreachable (or silent for 5 s): fail open" in text
    assert "min of a member's groups" in text and "no [midway] admin_key" in text
    off = midway_factory(plugins=[PLUGIN])
    assert "spend limits off ([billing] spend_limits)" in midway_billing.describe(off.midway)


class FakeIdentity:
    """An identity provider as the OIDC plugin will be: a bearer token → a signed-in
    person with the IdP's subject, e-mail and groups."""

    from midway import hookimpl

    @hookimpl
    def authenticate(self, exchange: Any, credential: str | None) -> Principal | None:
        people = {"tok-ann": ("sub-ann", "ann@example.com", ("interns",)),
                  "tok-bob": ("sub-bob", "bob@example.com", ("interns", "staff"))}
        if credential not in people:
            return None
        subject, email, groups = people[credential]
        return Principal(id=f"oidc:{subject}", name=email, kind="oidc", subject=subject,
                         email=email, groups=groups)


def test_signed_in_people_get_user_and_group_caps(midway_factory, fake_upstream) -> None:
    """OIDC principals: a `user` limit names the IdP subject; group caps are per member."""
    fake_upstream.fake.default = exact_reply
    running = midway_factory(plugins=[PLUGIN, ("idp", FakeIdentity())], config=config())
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "15")  # $0.15
    set_limit(running, {"type": "user", "user_id": "sub-bob"}, "0")  # bob: nothing today
    ann = asyncio.run(fire(running.url, "tok-ann", 1)) + asyncio.run(
        fire(running.url, "tok-ann", 1))
    assert ann == [200, 429]  # ~$0.10 each: one fits in her own $0.15
    assert asyncio.run(fire(running.url, "tok-bob", 1)) == [429]
    effective = admin(running, "GET", "/effective", **{"period[]": "daily"}).json()["data"]
    by_user = {r["scope"]["user_id"]: r for r in effective}
    assert by_user["oidc:sub-ann"]["source"] == {"type": "rbac_group",
                                                 "rbac_group_id": "interns"}
    assert by_user["oidc:sub-ann"]["groups"] == ["interns"]
    assert by_user["oidc:sub-bob"]["source"] == {"type": "user", "user_id": "sub-bob"}
    assert by_user["oidc:sub-bob"]["amount"] == "0"


def test_a_message_batch_is_no_way_around_a_cap(midway_factory, fake_upstream) -> None:
    running = midway_factory(plugins=[PLUGIN], config=config())
    set_limit(running, {"type": "user", "user_id": "ci-bot"}, "1", "monthly")  # one cent
    batch = {"requests": [{"custom_id": f"r{n}", "params": {
        "model": "claude-sonnet-4-6", "max_tokens": 4096,
        "messages": [{"role": "user", "content": "x"}]}} for n in range(3)]}
    answer = httpx.post(f"{running.url}/v1/messages/batches", json=batch,
                        headers={"x-api-key": CAPPED, "anthropic-version": "2023-06-01"})
    assert answer.status_code == 429 and answer.json()["error"]["type"] == "billing_error"
    assert "monthly" in answer.json()["error"]["message"]
    assert not [r for r in fake_upstream.requests if "batches" in r.path]


def test_a_store_that_does_not_answer_counts_as_away(midway_factory, fake_upstream,
                                                     postgres_dsn, pg_schema) -> None:
    """A store that holds the check longer than spend_limits_check_timeout (here: another
    session locking the counters, as a stuck backup or a partition would) fails as
    configured instead of holding the developer's request."""
    import asyncpg

    fake_upstream.fake.default = exact_reply
    running = midway_factory(plugins=[PLUGIN], config=config(
        store=postgres_dsn, schema=pg_schema, spend_limits_on_store_error="closed",
        spend_limits_check_timeout=0.5))
    set_limit(running, {"type": "rbac_group", "rbac_group_id": "interns"}, "1000")
    client = anthropic.Anthropic(base_url=running.url, api_key=CAPPED, max_retries=0)
    client.messages.create(model="claude-haiku-4-5", max_tokens=5,
                           messages=[{"role": "user", "content": "x"}])

    async def lock() -> Any:
        conn = await asyncpg.connect(postgres_dsn, server_settings={"search_path": pg_schema})
        await conn.execute("BEGIN; LOCK TABLE billing_counters IN ACCESS EXCLUSIVE MODE")
        return conn

    conn = running.call(lock())
    try:
        with pytest.raises(anthropic.RateLimitError) as info:
            client.messages.create(model="claude-haiku-4-5", max_tokens=5,
                                   messages=[{"role": "user", "content": "x"}])
        assert info.value.response.json()["error"]["message"].startswith(
            "spend limit unavailable")
    finally:
        running.call(conn.close())
    answer = client.messages.create(model="claude-haiku-4-5", max_tokens=5,
                                    messages=[{"role": "user", "content": "x"}])
    assert answer.content
    assert running.call(billing_of(running).flush(30))
