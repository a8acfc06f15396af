"""Message Batches through a real SDK client: held at submit from the requests' estimates,
priced per result from the results file at the batch discount, the rest released; readable
only by whoever submitted them."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import anthropic
import httpx
import orjson
import pytest
from helpers import PLUGIN, billing_of, ledger

from midway.testing import Reply, run_cli

KEYS = [{"key": "mk-alice", "name": "alice", "team": "search"},
        {"key": "mk-bob", "name": "bob", "team": "search"}]
M = Decimal(10**6)


def config(**billing: object) -> dict:
    return {"midway": {"client_keys": KEYS},
            "billing": {"budgets": [{"name": "alice", "scope": "principal", "match": "alice",
                                     "period": "total", "limit_usd": "50"}], **billing}}


def batch_requests(n: int, max_tokens: int = 1000) -> list[dict]:
    return [{"custom_id": f"req-{i}", "params": {
        "model": "claude-opus-4-8", "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"question {i}"}]}} for i in range(n)]


def results(url: str, key: str, batch_id: str) -> httpx.Response:
    # The results file as a plain HTTP client fetches it (the SDK's own: below).
    return httpx.get(f"{url}/v1/messages/batches/{batch_id}/results",
                     headers={"x-api-key": key, "anthropic-version": "2023-06-01"})


def test_batch_held_at_submit_and_settled_per_result(midway_factory, fake_upstream) -> None:
    running = midway_factory(plugins=[PLUGIN], config=config())
    billing = billing_of(running)
    fake_upstream.reply(Reply(usage={"input_tokens": 1000, "output_tokens": 200}),
                        Reply(status=529, error_type="overloaded_error"),
                        Reply(usage={"input_tokens": 10, "output_tokens": 3000,
                                     "cache_read_input_tokens": 5000}))
    client = anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0)
    batch = client.messages.batches.create(requests=batch_requests(3))  # type: ignore[arg-type]
    assert batch.processing_status == "in_progress" and batch.id.startswith("msgbatch_")
    rows = ledger(running, 1)
    assert rows[0]["cost_pusd"] == 0 and rows[0]["batch"] == 1
    (budget,) = running.call(billing.budgets())
    # Each request at its full max_tokens, input from its size, at half the Opus rates.
    held = Decimal(budget["reserved_usd"])
    assert budget["spent_usd"] == "0" and held > 3 * 1000 * 25 / M / 2
    assert client.messages.batches.retrieve(batch.id).processing_status == "ended"

    answer = results(running.url, "mk-alice", batch.id)
    assert answer.status_code == 200, answer.text
    rows = ledger(running, 6)  # submit, retrieve, results, and a row per result
    by_id = {r["id"]: r for r in rows if r["kind"] == "batch_result"}
    assert set(by_id) == {f"{batch.id}:req-{i}" for i in range(3)}
    first = (1000 * Decimal(5) + 200 * Decimal(25)) / M / 2
    third = (10 * Decimal(5) + 3000 * Decimal(25) + 5000 * Decimal("0.5")) / M / 2
    assert Decimal(by_id[f"{batch.id}:req-0"]["cost_pusd"]) / 10**12 == first
    assert by_id[f"{batch.id}:req-1"]["cost_pusd"] == 0
    assert by_id[f"{batch.id}:req-1"]["error"] == "errored"
    assert Decimal(by_id[f"{batch.id}:req-2"]["cost_pusd"]) / 10**12 == third
    assert all(r["principal_name"] == "alice" and r["batch"] == 1 for r in by_id.values())
    (budget,) = running.call(billing.budgets())
    assert Decimal(budget["spent_usd"]) == first + third and budget["reserved_usd"] == "0"

    # Fetched again (a client retrying): charged once.
    assert results(running.url, "mk-alice", batch.id).status_code == 200
    ledger(running, 7)
    (budget,) = running.call(billing.budgets())
    assert Decimal(budget["spent_usd"]) == first + third
    report = {r["model"]: r for r in running.call(billing.report("model"))}
    assert Decimal(report["claude-opus-4-8"]["cost_usd"]) == first + third
    assert report["claude-opus-4-8"]["output_tokens"] == 3200


def test_a_batch_is_readable_only_by_its_submitter(midway_factory, fake_upstream) -> None:
    running = midway_factory(plugins=[PLUGIN], config=config())
    alice = anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0)
    bob = anthropic.Anthropic(base_url=running.url, api_key="mk-bob", max_retries=0)
    batch = alice.messages.batches.create(requests=batch_requests(1))  # type: ignore[arg-type]
    ledger(running, 1)
    with pytest.raises(anthropic.NotFoundError):
        bob.messages.batches.retrieve(batch.id)
    with pytest.raises(anthropic.NotFoundError):
        bob.messages.batches.cancel(batch.id)
    assert results(running.url, "mk-bob", batch.id).status_code == 404
    assert not [r for r in fake_upstream.requests if batch.id in r.path]
    assert alice.messages.batches.retrieve(batch.id).id == batch.id


def test_batch_over_its_hold_is_refused(midway_factory, fake_upstream) -> None:
    running = midway_factory(plugins=[PLUGIN], config=config())
    client = anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0)
    # 100 requests × 64000 output tokens × $12.50/MTok (half of Opus) = $80 > $50
    with pytest.raises(anthropic.RateLimitError):
        client.messages.batches.create(requests=batch_requests(100, 64000))  # type: ignore[arg-type]
    assert not [r for r in fake_upstream.requests if "batches" in r.path]
    # Held, a batch keeps its room taken until its results are priced.
    client.messages.batches.create(requests=batch_requests(40, 64000))  # type: ignore[arg-type]
    ledger(running, 2)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.batches.create(requests=batch_requests(40, 64000))  # type: ignore[arg-type]


def test_canceled_results_cost_nothing_and_release_the_hold(midway_factory,
                                                           fake_upstream) -> None:
    running = midway_factory(plugins=[PLUGIN], config=config())
    fake_upstream.fake.batches.hold = True
    client = anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0)
    batch = client.messages.batches.create(requests=batch_requests(2))  # type: ignore[arg-type]
    assert client.messages.batches.cancel(batch.id).processing_status == "ended"
    assert results(running.url, "mk-alice", batch.id).status_code == 200
    rows = ledger(running, 5)  # submit, cancel, results, and a row per result
    assert {r["error"] for r in rows if r["kind"] == "batch_result"} == {"canceled"}
    (budget,) = running.call(billing_of(running).budgets())
    assert budget["spent_usd"] == "0" and budget["reserved_usd"] == "0"


def test_results_of_a_batch_midway_did_not_submit(midway_factory, fake_upstream) -> None:
    """Submitted around midway (straight to the upstream), fetched through it: priced all
    the same, to the principal fetching them, and counted on that principal's budget."""
    running = midway_factory(plugins=[PLUGIN], config=config())
    fake_upstream.reply(Reply(usage={"input_tokens": 100, "output_tokens": 1000}))
    direct = anthropic.Anthropic(base_url=fake_upstream.url, api_key="sk-ant-x", max_retries=0)
    batch = direct.messages.batches.create(requests=batch_requests(1))  # type: ignore[arg-type]
    direct.messages.batches.retrieve(batch.id)
    # alice's budget counter exists already (a message reserved on it): it must move too.
    fake_upstream.reply(Reply(usage={"input_tokens": 0, "output_tokens": 40}))
    anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0
                        ).messages.create(model="claude-opus-4-8", max_tokens=50,
                                          messages=[{"role": "user", "content": "x"}])
    ledger(running, 1)
    assert results(running.url, "mk-alice", batch.id).status_code == 200
    rows = ledger(running, 3)
    (result,) = [r for r in rows if r["kind"] == "batch_result"]
    cost = (100 * Decimal(5) + 1000 * Decimal(25)) / M / 2
    assert result["principal_name"] == "alice" and Decimal(result["cost_pusd"]) / 10**12 == cost
    (budget,) = running.call(billing_of(running).budgets())
    assert Decimal(budget["spent_usd"]) == cost + 40 * Decimal(25) / M
    counters = running.call(billing_of(running).store.all_counters())
    assert [spent for spent, _ in counters.values()] == [
        int((cost + 40 * Decimal(25) / M) * 10**12)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_batch_opened_after_reconciliation_took_its_hold(backend, tmp_path, request) -> None:
    """Reconciliation charged the submit its estimate (its instance looked dead); the batch
    opening after all takes that charge back: the counter equals the ledger again."""
    from test_reconcile import KEY, row, settled, table_for

    from midway.options import load_table
    from midway_billing.config import BillingConfig
    from midway_billing.store import Batch, Reservation

    table = table_for(backend, request)

    async def run() -> None:
        config = load_table(BillingConfig, "billing", table, data_dir=tmp_path)
        store = config.make_store()
        await store.open()
        try:
            hold = Reservation("ex-batch", 70, [KEY], 1.0)
            await store.reserve(hold, {KEY: 1000})
            await store.write_ahead(row(store, "ex-batch.1", "ex-batch"))
            await store.reconcile_instance(store.instance)
            assert (await store.counters([KEY]))[KEY] == (70, 0)
            batch = Batch("msgbatch_x", "ex-batch", 1.0, "alice", ("alice",), {}, {"a": 70})
            await store.open_batch(batch, [settled(store, "ex-batch.1", "ex-batch", 0)], hold)
            assert (await store.counters([KEY]))[KEY] == (0, 0)
            assert sum(r["cost_pusd"] for r in await store.rows()) == 0
            opened = await store.batch("msgbatch_x")
            assert opened is not None and opened.held_pusd == 0
        finally:
            await store.close()

    asyncio.run(run())


def test_the_sdk_fetches_results_through_midway(midway_factory, fake_upstream) -> None:
    """``batches.results(id)`` follows the batch's ``results_url``: midway names itself there,
    so the results are priced, the hold released, and the client key stays with midway."""
    fake_upstream.fake.batches.results_origin = "https://api.anthropic.com"  # as Anthropic does
    running = midway_factory(plugins=[PLUGIN], config=config(),
                             upstream_api_key="sk-ant-upstream")
    billing = billing_of(running)
    fake_upstream.reply(Reply(usage={"input_tokens": 1000, "output_tokens": 200}),
                        Reply(usage={"input_tokens": 40, "output_tokens": 60}))
    client = anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0)
    batch = client.messages.batches.create(requests=batch_requests(2))  # type: ignore[arg-type]
    (budget,) = running.call(billing.budgets())
    assert Decimal(budget["reserved_usd"]) > 0
    got = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert set(got) == {"req-0", "req-1"} and all(r.type == "succeeded" for r in got.values())
    rows = ledger(running, 5)  # submit, the SDK's retrieve, results, a row per result
    by_id = {r["id"]: r for r in rows if r["kind"] == "batch_result"}
    first = (1000 * Decimal(5) + 200 * Decimal(25)) / M / 2
    second = (40 * Decimal(5) + 60 * Decimal(25)) / M / 2
    assert Decimal(by_id[f"{batch.id}:req-0"]["cost_pusd"]) / 10**12 == first
    assert Decimal(by_id[f"{batch.id}:req-1"]["cost_pusd"]) / 10**12 == second
    (budget,) = running.call(billing.budgets())
    assert Decimal(budget["spent_usd"]) == first + second and budget["reserved_usd"] == "0"
    # The upstream saw the results request, with midway's upstream key, never the client's.
    paths = [r.path for r in fake_upstream.requests]
    assert paths[-1] == f"/v1/messages/batches/{batch.id}/results"
    assert {r.headers.get("x-api-key") for r in fake_upstream.requests} == {"sk-ant-upstream"}
    assert not any("mk-alice" in str(r.headers) for r in fake_upstream.requests)


def test_an_operator_releases_a_hold_whose_results_midway_never_sees(
        midway_factory, fake_upstream, tmp_path) -> None:
    """`midway billing batches` shows what each batch holds; `release-batch` frees it (the
    results were read at the upstream directly, say). Results fetched later still cost."""
    running = midway_factory(plugins=[PLUGIN], config=config())
    client = anthropic.Anthropic(base_url=running.url, api_key="mk-alice", max_retries=0)
    # 40 × 64000 output tokens at half Opus's price holds $32 of alice's $50: no room for two.
    held = client.messages.batches.create(requests=batch_requests(40, 64000))  # type: ignore[arg-type]
    ledger(running, 1)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.batches.create(requests=batch_requests(40, 64000))  # type: ignore[arg-type]

    def midway(*command: str) -> tuple[int, str]:
        return run_cli(tmp_path, "billing", list(command), "",
                       data_dir=running.midway.settings.data_dir)

    code, out = midway("billing", "batches", "--held", "--json")
    [row] = orjson.loads(out)
    assert code == 0 and row["batch_id"] == held.id and row["principal_name"] == "alice"
    assert Decimal(row["held_usd"]) == Decimal(running.call(
        billing_of(running).budgets())[0]["reserved_usd"]) > 30
    code, out = midway("billing", "batches")
    assert code == 0 and held.id in out and "alice" in out
    code, out = midway("billing", "release-batch", held.id)
    assert code == 0 and out.startswith(f"{held.id}: released ${row['held_usd']}"), out
    assert midway("billing", "batches", "--held", "--json")[1].strip() == "[]"
    [row] = orjson.loads(midway("billing", "batches", "--json")[1])
    assert row["held_usd"] == "0" and row["released_by"].startswith("cli:")
    (budget,) = running.call(billing_of(running).budgets())
    assert budget["reserved_usd"] == "0" and budget["spent_usd"] == "0"
    again = client.messages.batches.create(requests=batch_requests(40, 64000))  # type: ignore[arg-type]

    # Twice is harmless; a batch midway never saw is named back.
    assert "holds nothing" in midway("billing", "release-batch", held.id)[1]
    code, out = midway("billing", "release-batch", "msgbatch_nope")
    assert code == 1 and "no batch 'msgbatch_nope' was submitted through midway" in out
    # The released batch's results, fetched after all, are charged; the other hold stays.
    assert results(running.url, "mk-alice", held.id).status_code == 200
    ledger(running, 4 + 40)  # two submits, the refused one, the results fetch; 40 results
    (budget,) = running.call(billing_of(running).budgets())
    assert Decimal(budget["spent_usd"]) > 0
    [other] = orjson.loads(midway("billing", "batches", "--held", "--json")[1])
    assert other["batch_id"] == again.id and budget["reserved_usd"] == other["held_usd"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_release_racing_the_results_releases_once(backend, tmp_path, request) -> None:
    """Two operators and the results' settlement at once, on two stores (PostgreSQL: two
    connections): the hold comes off once, the results are charged once, nothing below 0."""
    from test_reconcile import KEY, settled, table_for

    from midway.options import load_table
    from midway_billing.config import BillingConfig
    from midway_billing.store import Batch, Reservation

    table = table_for(backend, request)

    async def run() -> None:
        config = load_table(BillingConfig, "billing", table, data_dir=tmp_path)
        one, two = config.make_store(), config.make_store()
        await one.open()
        await two.open()
        try:
            for n in range(5):
                batch_id, exchange = f"msgbatch_race{n}", f"ex-race{n}"
                hold = Reservation(exchange, 700, [KEY], 1.0)
                await one.reserve(hold, {KEY: 10**6})
                await one.open_batch(Batch(batch_id, exchange, 1.0, "alice", ("alice",), {},
                                           {"a": 400, "b": 300}), [], hold)
                result = {**settled(one, f"{batch_id}:a", exchange, 90), "kind": "batch_result",
                          "batch": 1}
                before = await one.counters([KEY])
                released = await asyncio.gather(
                    one.release_batch(batch_id, "cli:a", 2.0),
                    two.release_batch(batch_id, "cli:b", 2.0),
                    two.settle_batch(batch_id, [result], ended=True))
                spent, reserved = (await one.counters([KEY]))[KEY]
                assert (spent, reserved) == (before[KEY][0] + 90, 0)
                # The hold came off once: by one release, by the other, or by the results.
                taken = [r["held_pusd"] for r in released[:2] if r is not None]
                assert sorted(taken) in ([0, 0], [0, 700])
        finally:
            await one.close()
            await two.close()

    asyncio.run(run())
