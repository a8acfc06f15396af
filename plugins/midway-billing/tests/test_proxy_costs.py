"""Real SDK clients through the proxy: the recorded cost equals the hand-computed figure."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import orjson
import pytest
from helpers import PLUGIN, billing_of, fake_cache, ledger, retry_overloaded

from midway.testing import Reply, wait_for

M = Decimal(10**6)
# Usage with cache writes of both TTLs, cache reads and web searches.
USAGE = {"input_tokens": 1234, "output_tokens": 567, "cache_creation_input_tokens": 3000,
         "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
         "cache_read_input_tokens": 45678, "server_tool_use": {"web_search_requests": 2}}
# claude-opus-4-8: 5 in, 6.25 write 5m, 10 write 1h, 0.50 read, 25 out; $0.01 per search
OPUS_COST = (1234 * Decimal(5) + 567 * Decimal(25) + 1000 * Decimal("6.25") + 2000 * Decimal(10)
             + 45678 * Decimal("0.5")) / M + 2 * Decimal("0.01")


def client(running, key: str = "sk-ant-test") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=running.url, api_key=key, max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_sdk_cost_exact_with_both_cache_ttls(midway_factory, fake_upstream, stream) -> None:
    running = midway_factory(plugins=[PLUGIN])
    fake_upstream.reply(Reply(usage=USAGE, chunk_size=7))
    c = client(running)
    kwargs = dict(model="claude-opus-4-8", max_tokens=1000,
                  messages=[{"role": "user", "content": "hi"}])
    if stream:
        with c.messages.stream(**kwargs) as s:
            final = s.get_final_message()
    else:
        final = c.messages.create(**kwargs)
    assert final.usage.cache_read_input_tokens == 45678
    rows = ledger(running, 1)
    assert len(rows) == 1
    row = rows[0]
    assert row["kind"] == "attempt" and row["state"] == "settled" and row["status"] == 200
    assert Decimal(row["cost_pusd"]) / 10**12 == OPUS_COST
    assert Decimal("0.089434") == OPUS_COST  # to the cent and beyond: the exact figure
    assert (row["cache_write_5m_tokens"], row["cache_write_1h_tokens"]) == (1000, 2000)
    assert row["cache_read_tokens"] == 45678 and row["web_search_requests"] == 2
    assert row["id"].endswith(".1") and row["id"].startswith("mw_")
    report = running.call(billing_of(running).report("model"))
    assert report[0]["cost_usd"] == "0.089434"
    wait_for(lambda: running.midway.metrics.registry.get_sample_value(
        "midway_billing_spend_usd_total", {"team": "", "model": "claude-opus-4-8"})
        == pytest.approx(0.089434))
    assert report[0]["input_tokens"] == 1234


def test_annotations_for_audit(midway_factory, fake_upstream) -> None:
    seen: dict = {}

    from types import SimpleNamespace

    from midway import hookimpl

    @hookimpl(trylast=True)
    def post_response(exchange):
        seen.update(exchange.annotations)

    audit = SimpleNamespace(__name__="audit", post_response=post_response)
    running = midway_factory(plugins=[PLUGIN, ("audit", audit)])
    fake_upstream.reply(Reply(usage={"input_tokens": 110, "cache_creation_input_tokens": 50,
                                     "cache_read_input_tokens": 20, "output_tokens": 47}))
    client(running).messages.create(model="claude-opus-4-8", max_tokens=10,
                                    messages=[{"role": "user", "content": "x"}])
    wait_for(lambda: "billing" in seen)
    assert seen["cost_usd"] == "0.0020475"
    assert seen["billing"]["model"] == "claude-opus-4-8"
    assert seen["billing"]["breakdown"]["cache_write_5m"] == "0.0003125"
    assert seen["billing"]["unpriced"] is False
    # who pays, first and in this order (audit stores the annotation as it is)
    assert list(seen["billing"])[:5] == ["principal", "principal_name", "team", "project",
                                         "ancestors"]
    assert seen["billing"]["ancestors"] == () and seen["billing"]["team"] is None


def test_retried_attempt_recorded_once_at_zero(midway_factory, fake_upstream) -> None:
    running = midway_factory(plugins=[PLUGIN, retry_overloaded()])
    fake_upstream.reply(Reply(status=529), Reply(usage={"input_tokens": 10, "output_tokens": 2}))
    client(running).messages.create(model="claude-haiku-4-5", max_tokens=10,
                                    messages=[{"role": "user", "content": "x"}])
    rows = sorted(ledger(running, 2), key=lambda r: r["attempt"])
    assert [r["attempt"] for r in rows] == [1, 2]
    assert rows[0]["status"] == 529 and rows[0]["cost_pusd"] == 0
    assert Decimal(rows[1]["cost_pusd"]) / 10**12 == (10 * 1 + 2 * 5) / M
    assert len({r["exchange_id"] for r in rows}) == 1
    assert len(fake_upstream.messages_requests) == 2


def test_unknown_model_flagged_with_tokens(midway_factory, fake_upstream, caplog) -> None:
    running = midway_factory(plugins=[PLUGIN])
    for _ in range(2):
        fake_upstream.reply(Reply(usage={"input_tokens": 99, "output_tokens": 9}))
        client(running).messages.create(model="mystery-model", max_tokens=10,
                                        messages=[{"role": "user", "content": "x"}])
    (row, _) = ledger(running, 2)
    warned = [r for r in caplog.records if "'mystery-model' is not in the price catalogue"
              in r.getMessage()]
    assert len(warned) == 1 and "$5 / $25 per MTok" in warned[0].getMessage()  # once per id
    # The catalogue's unknown-model tier ($5 / $25 per MTok), never $0, and still flagged.
    assert row["unpriced"] == 1 and row["input_tokens"] == 99
    assert row["priced_model"] == "unknown_model" and row["pricing_rule"] == "unknown_model"
    assert row["cost_pusd"] == (99 * 5 + 9 * 25) * 10**6
    (item,) = running.call(billing_of(running).report("model"))
    assert item["unpriced"] == 2
    assert billing_of(running).unknown_models() == ["mystery-model"]
    from click.testing import CliRunner

    from midway.cli import cli

    report = CliRunner(env={"MIDWAY_PLUGINS": "billing"}).invoke(cli, [
        "billing", "report", "--by", "model", "--data-dir",
        str(running.midway.settings.data_dir)])
    assert report.exit_code == 0, report.output
    assert "mystery-model" in report.output
    assert "2 request(s) used models the price catalogue does not list" in report.output


def test_cache_hit_is_saved_not_spent(midway_factory, fake_upstream) -> None:
    cached = orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant",
                           "model": "claude-sonnet-4-6", "content": [{"type": "text", "text": "x"}],
                           "stop_reason": "end_turn", "stop_sequence": None,
                           "usage": {"input_tokens": 1000, "output_tokens": 100}})
    running = midway_factory(plugins=[PLUGIN, fake_cache(cached)], config={"billing": {
        "budgets": [{"scope": "all", "period": "day", "limit_usd": "0.000001"}]}})
    # The hard budget would refuse anything forwarded: a hit is neither reserved nor refused.
    client(running).messages.create(model="claude-sonnet-4-6", max_tokens=10,
                                    messages=[{"role": "user", "content": "x"}])
    (row,) = ledger(running, 1)
    assert row["kind"] == "cache_hit" and row["cost_pusd"] == 0
    assert Decimal(row["saved_pusd"]) / 10**12 == (1000 * 3 + 100 * 15) / M
    assert fake_upstream.messages_requests == []
    (item,) = running.call(billing_of(running).report("team"))
    assert item["cost_usd"] == "0" and item["saved_usd"] == "0.0045" and item["cache_hits"] == 1


def test_attribution_to_team_and_project(midway_factory, fake_upstream) -> None:
    keys = [{"key": "mk-alice", "name": "alice", "team": "search"},
            {"key": "mk-bob", "name": "bob", "team": "ads", "allow_project_header": False}]
    running = midway_factory(plugins=[PLUGIN], config={"midway": {"client_keys": keys}})
    for key in ("mk-alice", "mk-bob"):
        anthropic.Anthropic(base_url=running.url, api_key=key, max_retries=0,
                            default_headers={"x-midway-project": "apollo"}).messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    rows = {r["principal"]: r for r in ledger(running, 2)}
    assert rows["alice"]["team"] == "search" and rows["alice"]["project"] == "apollo"
    assert rows["bob"]["team"] == "ads" and rows["bob"]["project"] is None
    by_project = running.call(billing_of(running).report("project"))
    assert {r["project"] for r in by_project} == {"apollo", None}
    series = running.call(billing_of(running).spend_series("hour", "team"))
    assert {s["key"] for s in series} == {"search", "ads"}


def test_unauthenticated_requests_leave_no_rows(midway_factory, fake_upstream) -> None:
    keys = [{"key": "mk-alice", "name": "alice", "team": "search"}]
    running = midway_factory(plugins=[PLUGIN], config={"midway": {"client_keys": keys}})
    for _ in range(3):
        with pytest.raises(anthropic.AuthenticationError):
            client(running, "wrong-key").messages.create(
                model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    client(running, "mk-alice").messages.create(
        model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    (row,) = ledger(running, 1)
    assert row["principal"] == "alice"


def test_router_rewrite_priced_from_the_same_table(midway_factory, fake_upstream) -> None:
    from types import SimpleNamespace

    from midway import Upstream, hookimpl

    @hookimpl
    def choose_upstream(exchange):
        return Upstream(url=fake_upstream.url, name="vendor", model="vendor-model")

    router = SimpleNamespace(__name__="router", choose_upstream=choose_upstream)
    running = midway_factory(plugins=[PLUGIN, router], config={"billing": {"prices": {
        "vendor-model": {"input": "2", "output": "8", "cache_write_5m": "2.5",
                         "cache_write_1h": "4", "cache_read": "0.2"}}}})
    fake_upstream.reply(Reply(usage={"input_tokens": 1000, "output_tokens": 500}))
    client(running).messages.create(model="claude-opus-4-8", max_tokens=10,
                                    messages=[{"role": "user", "content": "x"}])
    (row,) = ledger(running, 1)
    assert fake_upstream.messages_requests[0].json["model"] == "vendor-model"
    assert row["priced_model"] == "vendor-model" and row["upstream"] == "vendor"
    assert row["model"] == "vendor-model"  # what the attempt asked for
    assert Decimal(row["cost_pusd"]) / 10**12 == (1000 * 2 + 500 * 8) / M
