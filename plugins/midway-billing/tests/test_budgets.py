"""Budgets hold under concurrency: on SQLite, on PostgreSQL, and across PostgreSQL instances."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from helpers import PLUGIN, billing_of, ledger
from test_reconcile import row, settled

from midway.options import load_table
from midway.testing import RecordedRequest, Reply, wait_for
from midway_billing.budgets import Bucket
from midway_billing.config import BillingConfig
from midway_billing.plugin import WRITE_AHEAD_FAILED
from midway_billing.store import Reservation

MAX_TOKENS = 6600  # × $15/MTok (Sonnet output) ≈ $0.10 per request
KEYS = [{"key": "mk-alice", "name": "alice", "team": "search"}]


def exact_reply(rec: RecordedRequest) -> Reply:
    # Usage equal to billing's estimate (body bytes / 3 input tokens, max_tokens output), so
    # settling never frees room: the admitted count is exact whatever the timing.
    return Reply(usage={"input_tokens": math.ceil(len(rec.body) / 3),
                        "output_tokens": MAX_TOKENS}, delay=0.01)


def body_size() -> int:
    return len(orjson.dumps({"max_tokens": MAX_TOKENS, "messages": [
        {"role": "user", "content": "count me"}], "model": "claude-sonnet-4-6"}))


async def fire(url: str, n: int) -> list[int]:
    client = anthropic.AsyncAnthropic(base_url=url, api_key="mk-alice", max_retries=0)

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


def billing_config(**extra) -> dict:
    # Reservations at the full MAX_TOKENS: the admitted counts below are exact.
    return {"midway": {"client_keys": KEYS},
            "billing": {"reserve_output_tokens": MAX_TOKENS, **extra}}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_fifty_concurrent_requests_admit_exactly_ten(midway_factory, fake_upstream, backend,
                                                     request) -> None:
    fake_upstream.fake.default = exact_reply
    per_request = Decimal(math.ceil(body_size() / 3) * 3 + MAX_TOKENS * 15) / 10**6
    assert Decimal("0.099") < per_request < Decimal("0.101")
    limit = per_request * 10 + per_request / 2  # "$1 left": room for 10, not 11
    extra = {"budgets": [{"scope": "team", "match": "search", "period": "day",
                          "limit_usd": str(limit), "name": "search-daily"}]}
    if backend == "postgresql":
        extra.update(store=request.getfixturevalue("postgres_dsn"),
                     schema=request.getfixturevalue("pg_schema"))
    running = midway_factory(plugins=[PLUGIN], config=billing_config(**extra))
    statuses = asyncio.run(fire(running.url, 50))
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 40
    assert len(fake_upstream.messages_requests) == 10
    rows = ledger(running, 50)
    spent = sum(r["cost_pusd"] for r in rows)
    assert Decimal(spent) / 10**12 == per_request * 10 <= limit
    assert sum(r["kind"] == "refused" for r in rows) == 40
    (budget,) = running.call(billing_of(running).budgets())
    assert Decimal(budget["spent_usd"]) == per_request * 10 and budget["reserved_usd"] == "0"


def test_a_reservation_and_the_write_ahead_it_admits_share_one_commit(
        midway_factory, fake_upstream) -> None:
    """On SQLite the reservation's transaction is held open until the write-ahead of the
    attempt it admits has joined it: one commit for both, before anything goes upstream
    (the store's hold: one transaction a request, not two)."""
    running = midway_factory(plugins=[PLUGIN], config=billing_config(budgets=[
        {"scope": "team", "period": "day", "limit_usd": "100", "name": "daily"}]))
    client = anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0)

    def create() -> None:
        client.messages.create(model="claude-haiku-4-5", max_tokens=5,
                               messages=[{"role": "user", "content": "x"}])

    create()  # its counter is made (a ledger sum: on the store thread)
    ledger(running, 1)
    fast = billing_of(running).store.db._fast  # type: ignore[attr-defined]
    # The hold is the loop's fast path; a reservation queued behind other work (a busy
    # machine, a checkpoint) goes to the store thread instead, in a transaction of its own:
    # requests are sent until one reservation has taken the fast path.
    held: list[list[str]] = []
    sent = 1
    while not held:
        assert sent < 20, "no reservation took the fast path in 19 requests"
        statements: list[str] = []
        fast.set_trace_callback(statements.append)
        create()
        sent += 1
        ledger(running, sent)
        fast.set_trace_callback(None)
        transactions: list[list[str]] = []
        for sql in statements:
            if sql.startswith("BEGIN"):
                transactions.append([])
            elif transactions:
                transactions[-1].append(sql)
        held = [t for t in transactions if any("INTO billing_reservations" in s for s in t)]
    for transaction in held:
        assert [s for s in transaction if s.startswith("INSERT INTO billing_ledger")
                and "DO NOTHING" in s], transaction  # the write-ahead, in the same one
        assert transaction[-1] == "COMMIT"
    assert len(fake_upstream.messages_requests) == sent


class FailingCommit:
    """Stands in for a SQLite store's statement cursor on the loop: its first COMMIT fails as
    on a failing disk (the transaction left open, for the store to roll back)."""

    def __init__(self, db: Any) -> None:
        self.fast = db._fast
        self.cursor = self.fast.statements
        self.failed = False
        self.fast.statements = self

    def execute(self, sql: str, args: Any = ()) -> Any:
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        return self.cursor.execute(sql, args)

    def executemany(self, sql: str, args: Any) -> Any:
        return self.cursor.executemany(sql, args)

    def restore(self) -> None:
        self.fast.statements = self.cursor


def test_a_failed_held_commit_refuses_its_request_as_a_failed_write_ahead(
        midway_factory, fake_upstream) -> None:
    """Should the commit of a reservation held for its write-ahead fail, the request fails as
    one whose write-ahead failed (503, nothing sent upstream): it never goes on unreserved."""
    running = midway_factory(plugins=[PLUGIN], config=billing_config(budgets=[
        {"scope": "team", "period": "day", "limit_usd": "100", "name": "daily"}]))
    client = anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0)

    def create() -> None:
        client.messages.create(model="claude-haiku-4-5", max_tokens=5,
                               messages=[{"role": "user", "content": "x"}])

    create()  # its counter is made: the next reservation is brief, and held
    ledger(running, 1)
    fault = FailingCommit(billing_of(running).store.db)
    try:
        with pytest.raises(anthropic.InternalServerError) as info:
            create()
    finally:
        fault.restore()
    assert fault.failed
    assert info.value.status_code == 503
    assert info.value.response.json()["error"] == {"type": "api_error",
                                                   "message": WRITE_AHEAD_FAILED}
    assert len(fake_upstream.messages_requests) == 1  # nothing went out for it
    # its attempt is settled at $0, as any whose write-ahead failed
    assert [(r["status"], r["cost_pusd"]) for r in ledger(running, 2)][1] == (503, 0)
    create()  # the next one goes through
    assert len(fake_upstream.messages_requests) == 2


def test_a_failed_held_commit_fails_the_write_ahead_not_the_settlement_riding_along(
        tmp_path: Path) -> None:
    """The store's side: the write-ahead after a hold whose commit failed fails with that
    commit's error and writes nothing; the previous request's settlement, which was in the
    same transaction, runs again and lands."""
    key = Bucket("team", "search", "total", 0).key

    async def run() -> None:
        store = load_table(BillingConfig, "billing", {}, data_dir=tmp_path).make_store()
        await store.open()
        try:
            first = Reservation("ex-1", 100, [key], 1.0)
            assert (await store.reserve(first, {key: 10_000})).admitted  # the store thread's
            # (its counter is made): the units below run on the loop once it lets go
            wait_for(lambda: not store.db._draining)  # type: ignore[attr-defined]
            await store.write_ahead(row(store, "ex-1.1", "ex-1"), first)
            # deferred: carried by the next reservation, into its held transaction
            settling = store.settle([settled(store, "ex-1.1", "ex-1", 40)], first, 40)
            second = Reservation("ex-2", 100, [key], 1.0)
            assert (await store.reserve(second, {key: 10_000})).admitted
            assert not settling.done()  # told once the held transaction commits
            fault = FailingCommit(store.db)
            try:
                with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
                    await store.write_ahead(row(store, "ex-2.1", "ex-2"), second)
            finally:
                fault.restore()
            assert fault.failed
            await settling
            assert [(r["id"], r["state"], r["cost_pusd"]) for r in await store.rows()] == [
                ("ex-1.1", "settled", 40)]
            assert (await store.counters([key]))[key] == (40, 0)
            # A later write-ahead whose own hold landed goes on (the hold is checked).
            third = Reservation("ex-3", 100, [key], 1.0)
            assert (await store.reserve(third, {key: 10_000})).admitted
            await store.write_ahead(row(store, "ex-3.1", "ex-3"), third)
            assert (await store.counters([key]))[key] == (40, 100)
        finally:
            await store.close()

    asyncio.run(run())


def test_refusal_is_anthropic_rate_limit_with_reset(midway_factory, fake_upstream) -> None:
    running = midway_factory(plugins=[PLUGIN], config=billing_config(
        reserve_output_tokens=4096,  # the default: Opus output reserved at 4096 × $25/MTok
        budgets=[{"scope": "principal", "period": "month", "limit_usd": "0.01",
                  "name": "per-user"}]))
    client = anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="claude-opus-4-8", max_tokens=20000,
                               messages=[{"role": "user", "content": "x"}])
    response = info.value.response
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    message = body["error"]["message"]
    assert "'per-user'" in message and "resets at" in message and "would reserve $0.1" in message
    assert "reserve_output_tokens" in message
    assert int(response.headers["retry-after"]) > 0
    assert response.headers["x-should-retry"] == "false"
    assert running.midway.metrics.registry.get_sample_value(
        "midway_billing_budget_refusals_total", {"budget": "per-user"}) == 1
    assert fake_upstream.messages_requests == []
    (row,) = ledger(running, 1)
    assert row["kind"] == "refused" and row["cost_pusd"] == 0


def test_soft_budget_warns_but_admits(midway_factory, fake_upstream, caplog) -> None:
    running = midway_factory(plugins=[PLUGIN], config=billing_config(budgets=[
        {"scope": "team", "period": "day", "limit_usd": "0.000001", "mode": "soft",
         "name": "soft-one"}]))
    client = anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0)
    for _ in range(2):
        raw = client.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert raw.headers["x-midway-budget-warning"].startswith("soft-one: $")
    ledger(running, 2)
    assert "soft-one" in caplog.text
    metrics = running.midway.metrics.registry.get_sample_value(
        "midway_billing_budget_warnings_total", {"budget": "soft-one"})
    assert metrics == 2


def test_reservations_atomic_across_postgres_instances(postgres_dsn, pg_schema, tmp_path
                                                       ) -> None:
    """Two instances (two stores, two pools) race for one bucket: exactly 10 admitted."""

    async def run() -> list[bool]:
        stores = []
        for _ in range(2):
            config = load_table(BillingConfig, "billing", {
                "store": postgres_dsn, "schema": pg_schema, "max_pool": 10}, data_dir=tmp_path)
            store = config.make_store()
            await store.open()
            stores.append(store)
        key = Bucket("team", "search", "total", 0).key
        amount = 10**11  # $0.10
        try:
            results = await asyncio.gather(*[
                stores[i % 2].reserve(Reservation(f"x{i}", amount, [key], 0.0),
                                      {key: 10**12}) for i in range(50)])
            assert (await stores[0].counters([key]))[key] == (0, 10 * amount)
        finally:
            for store in stores:
                await store.close()
        return [r.admitted for r in results]

    assert asyncio.run(run()).count(True) == 10


def test_small_hard_budget_admits_claude_code_opus_at_zero_spent(midway_factory,
                                                                fake_upstream) -> None:
    # Claude Code asks Opus for max_tokens 64000: reserved in full ($1.60) a $0.50 hard
    # budget refused it with nothing spent; reserve_output_tokens (4096) caps the reservation.
    fake_upstream.reply(Reply(usage={"input_tokens": 30, "output_tokens": 12}))
    running = midway_factory(plugins=[PLUGIN], config={
        "midway": {"client_keys": KEYS}, "billing": {"budgets": [
            {"scope": "principal", "period": "day", "limit_usd": "0.50", "name": "small"}]}})
    client = anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0)
    with client.messages.stream(model="claude-opus-4-8", max_tokens=64000,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        answer = stream.get_final_message()
    assert answer.usage.output_tokens == 12 and answer.stop_reason == "end_turn"
    rows = ledger(running, 1)
    assert rows[0]["kind"] == "attempt" and 0 < int(rows[0]["cost_pusd"]) < 10**9


def test_absurd_max_tokens_is_refused_not_a_500(midway_factory, fake_upstream) -> None:
    import urllib.error
    import urllib.request

    running = midway_factory(plugins=[PLUGIN], config=billing_config(
        reserve_output_tokens=10**20,
        budgets=[{"scope": "team", "period": "day", "limit_usd": "100"}]))
    body = (b'{"model": "claude-sonnet-4-6", "max_tokens": 10000000000000000000, '
            b'"messages": [{"role": "user", "content": "big"}]}')
    request = urllib.request.Request(f"{running.url}/v1/messages", data=body, headers={
        "x-api-key": "mk-alice", "content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    # estimated at a capped 10M output tokens ($150), not at 1e19 (which would overflow a store)
    assert info.value.code == 429
    assert "would reserve $150.0" in orjson.loads(info.value.read())["error"]["message"]


def test_group_budget_is_a_pool_of_its_members_and_sees_earlier_spend(
        midway_factory, fake_upstream, tmp_path) -> None:
    """`scope = "group"`: the members of a group (by their keys' groups) share one bucket;
    a group budget added later counts what its members spent before (ledger `groups`)."""
    fake_upstream.fake.default = exact_reply
    keys = [{"key": "mk-g1", "name": "g1", "groups": ["ml_100%"]},
            {"key": "mk-g2", "name": "g2", "groups": ["ml_100%", "eng"]},
            {"key": "mk-other", "name": "other", "groups": ["ml_1000"]}]  # LIKE-alike name
    store = str(tmp_path / "shared-billing.db")
    first = midway_factory(plugins=[PLUGIN], config={
        "midway": {"client_keys": keys},
        "billing": {"store": store, "reserve_output_tokens": MAX_TOKENS}})
    assert asyncio.run(fire_as(first.url, "mk-g1", 2)) == [200, 200]
    assert asyncio.run(fire_as(first.url, "mk-other", 1)) == [200]
    rows = ledger(first, 3)
    assert {r["groups"] for r in rows} == {"\x1fml_100%\x1f", "\x1fml_1000\x1f"}
    first.stop()
    per_request = Decimal(math.ceil(body_size() / 3) * 3 + MAX_TOKENS * 15) / 10**6
    limit = per_request * 5 + per_request / 2  # room for 5: 2 spent already, 3 left
    running = midway_factory(plugins=[PLUGIN], config={
        "midway": {"client_keys": keys},
        "billing": {"store": store, "reserve_output_tokens": MAX_TOKENS, "budgets": [
            {"scope": "group", "match": "ml_100%", "period": "day", "limit_usd": str(limit),
             "name": "ml pool"}]}})
    statuses = asyncio.run(fire_as(running.url, "mk-g2", 3)) + \
        asyncio.run(fire_as(running.url, "mk-g1", 2))
    assert statuses == [200, 200, 200, 429, 429], statuses
    assert asyncio.run(fire_as(running.url, "mk-other", 2)) == [200, 200]  # not a member


async def fire_as(url: str, key: str, n: int) -> list[int]:
    """``n`` requests one after another (the order of the statuses is the order sent)."""
    client = anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0)
    out = []
    try:
        for _ in range(n):
            try:
                await client.messages.create(
                    model="claude-sonnet-4-6", max_tokens=MAX_TOKENS,
                    messages=[{"role": "user", "content": "count me"}])
                out.append(200)
            except anthropic.APIStatusError as exc:
                out.append(exc.status_code)
    finally:
        await client.close()
    return out


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_reservation_over_several_counters_holds_on_all_or_none(backend, tmp_path, request
                                                                  ) -> None:
    """A reservation holds each counter with one statement that checks its limit; one that
    has no room undoes the holds before it, and the refusal names it with the counters as
    they were. A limit no 64-bit counter can reach, or no limit, never refuses; a limit
    whose room a 64-bit sum cannot check is checked all the same."""
    table = {"store": "billing.db"}
    if backend == "postgresql":
        table = {"store": request.getfixturevalue("postgres_dsn"),
                 "schema": request.getfixturevalue("pg_schema")}

    async def run() -> None:
        store = load_table(BillingConfig, "billing", table, data_dir=tmp_path).make_store()
        await store.open()
        a, b, c = (Bucket("team", name, "total", 0).key for name in ("a", "b", "c"))
        limits: dict[str, int | None] = {a: 10**21, b: 300, c: None}
        try:
            # new counters first (read from the ledger), then the one-statement holds
            for i in range(3):
                result = await store.reserve(Reservation(f"x{i}", 100, [a, b, c], 0.0), limits)
                assert result.admitted
                assert result.states == {a: (0, 100 * (i + 1)), b: (0, 100 * (i + 1)),
                                         c: (0, 100 * (i + 1))}
            refused = await store.reserve(Reservation("x3", 100, [a, b, c], 0.0), limits)
            assert not refused.admitted and refused.refused_key == b
            assert refused.states == {a: (0, 300), b: (0, 300), c: (0, 300)}
            assert await store.counters([a, b, c]) == {a: (0, 300), b: (0, 300), c: (0, 300)}
            # a limit past what a 64-bit sum checks in SQL: decided in Python, as ever
            huge = {a: 2**63 + 250, c: None}
            assert not (await store.reserve(Reservation("x4", 2**63 - 10, [a, c], 0.0),
                                            huge)).admitted
            assert await store.counters([a, c]) == {a: (0, 300), c: (0, 300)}
            rows = await store.db.fetch("SELECT exchange_id FROM billing_reservations "
                                        "ORDER BY exchange_id")
            assert [r["exchange_id"] for r in rows] == ["x0", "x1", "x2"]
        finally:
            await store.close()

    asyncio.run(run())
