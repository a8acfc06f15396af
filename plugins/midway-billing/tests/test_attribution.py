"""Attribution by Claude Code session and subagent: the headers land on the ledger (only
plausible ids), and ``billing report --by session|agent`` shows sessions and subagent trees."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import anthropic
import orjson
import pytest
from click.testing import CliRunner
from helpers import PLUGIN, billing_of, ledger

from midway.cli import cli
from midway.testing import Reply
from midway_billing.sessions import MAIN, agent_tree, clean_id

# claude-haiku-4-5: $1 in, $5 out per MTok; 1000 output tokens cost $0.005.
USAGE = {"input_tokens": 0, "output_tokens": 1000}
COST = Decimal("0.005")


def send(running, headers: dict[str, str]) -> None:
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0,
                                 default_headers=headers)
    client.messages.create(model="claude-haiku-4-5", max_tokens=10,
                           messages=[{"role": "user", "content": "x"}])


def test_sessions_and_subagent_trees(midway_factory, fake_upstream, monkeypatch) -> None:
    running = midway_factory(plugins=[PLUGIN])
    fake_upstream.fake.default = lambda rec: Reply(usage=USAGE)
    s = {"x-claude-code-session-id": "6f1c0a52-5b1e-4d7e-9a43-1d2f3c4b5a69"}
    send(running, s)  # the main thread, twice
    send(running, s)
    send(running, {**s, "x-claude-code-agent-id": "explore-1"})
    send(running, {**s, "x-claude-code-agent-id": "grep-2",
                   "x-claude-code-parent-agent-id": "explore-1"})
    send(running, {**s, "x-claude-code-agent-id": "grep-2",
                   "x-claude-code-parent-agent-id": "explore-1"})
    send(running, {**s, "x-claude-code-agent-id": "plan-3"})
    # Attacker-supplied values: a session id too long is not kept; an agent id that is not an
    # id is refused by the core (midway.agents) before anything is billed.
    send(running, {"x-claude-code-session-id": "a" * 129})
    with pytest.raises(anthropic.BadRequestError, match="x-claude-code-agent-id"):
        send(running, {**s, "x-claude-code-agent-id": "<script>alert(1)</script>"})
    rows = ledger(running, 7)
    assert {r["session_id"] for r in rows} == {s["x-claude-code-session-id"], None}
    assert not any(r["agent_id"] and "<" in r["agent_id"] for r in rows)
    billing = billing_of(running)

    by_session = {r["session"]: r for r in running.call(billing.report("session"))}
    assert Decimal(by_session[s["x-claude-code-session-id"]]["cost_usd"]) == 6 * COST
    assert Decimal(by_session[None]["cost_usd"]) == COST

    tree = [r for r in running.call(billing.agents())
            if r["session_id"] == s["x-claude-code-session-id"]]
    assert [(r["agent_id"], r["depth"], r["parent_agent_id"]) for r in tree] == [
        (MAIN, 0, None), ("explore-1", 1, MAIN), ("grep-2", 2, "explore-1"),
        ("plan-3", 1, MAIN)]
    own = {r["agent_id"]: Decimal(r["own_cost_usd"]) for r in tree}
    subtree = {r["agent_id"]: Decimal(r["subtree_cost_usd"]) for r in tree}
    assert own == {MAIN: 2 * COST, "explore-1": COST, "grep-2": 2 * COST, "plan-3": COST}
    assert subtree == {MAIN: 6 * COST, "explore-1": 3 * COST, "grep-2": 2 * COST,
                       "plan-3": COST}

    # The dashboard asks for the costliest sessions only: the store returns no others.
    top = running.call(billing.agents(top=1))
    assert {r["session_id"] for r in top} == {s["x-claude-code-session-id"]} and len(top) == 4
    assert {r["session_id"] for r in running.call(billing.agents(top=2))} == {
        s["x-claude-code-session-id"], None}

    monkeypatch.setenv("MIDWAY_PLUGINS", "billing")
    data_dir = str(running.midway.settings.data_dir)
    out = CliRunner().invoke(cli, ["billing", "report", "--by", "agent", "--data-dir",
                                   data_dir])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert any("    grep-2" in line for line in lines), out.output  # depth 2: indented
    out = CliRunner().invoke(cli, ["billing", "report", "--by", "agent", "--json",
                                   "--data-dir", data_dir])
    assert len(orjson.loads(out.output)) == len(running.call(billing.agents()))
    out = CliRunner().invoke(cli, ["billing", "report", "--by", "session", "--json",
                                   "--data-dir", data_dir])
    assert {r["session"] for r in orjson.loads(out.output)} == set(by_session)


def test_clean_id_bounds_what_a_client_can_make_us_keep() -> None:
    assert clean_id("6f1c0a52-5b1e-4d7e-9a43-1d2f3c4b5a69") == \
        "6f1c0a52-5b1e-4d7e-9a43-1d2f3c4b5a69"
    assert clean_id("researcher@my-team") == "researcher@my-team"
    for bad in ("", " ", "a" * 129, "a b", "x\x00", "é", "-leading", "../etc"):
        assert clean_id(bad) is None, bad


def test_agent_tree_survives_cycles_and_deep_chains() -> None:
    def row(agent: str | None, parent: str | None, cost: int = 1) -> dict:
        return {"session_id": "s", "agent_id": agent, "parent_agent_id": parent,
                "cost_pusd": cost, "requests": 1}

    # a → b → a: a cycle is broken by hanging one of them on the main thread.
    tree = agent_tree([row("a", "b"), row("b", "a"), row(None, None)])
    assert [r["depth"] for r in tree] == [0, 1, 2]
    assert tree[0]["subtree_pusd"] == 3
    # 20 000 agents each the parent of the next: no recursion limit.
    deep = [row(f"n{i}", f"n{i - 1}" if i else None) for i in range(20000)]
    tree = agent_tree(deep)
    assert tree[0]["subtree_pusd"] == 20000 and max(r["depth"] for r in tree) == 20000
    # a parent never seen itself: the agent hangs on the main thread.
    tree = agent_tree([row("orphan", "ghost")])
    assert [(r["agent_id"], r["parent_agent_id"]) for r in tree] == [
        (MAIN, None), ("orphan", MAIN)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_session_and_day_queries_on_both_stores(backend, tmp_path, request) -> None:
    from test_reconcile import settled, table_for

    from midway.options import load_table
    from midway_billing.config import BillingConfig

    table = table_for(backend, request)

    async def run() -> None:
        store = load_table(BillingConfig, "billing", table, data_dir=tmp_path).make_store()
        await store.open()
        try:
            rows = []
            for i, (session, agent, parent, cost) in enumerate([
                    ("s1", None, None, 5), ("s1", "a", None, 7), ("s1", "b", "a", 11),
                    ("s2", None, None, 3), (None, None, None, 1)]):
                rows.append({**settled(store, f"ex{i}.1", f"ex{i}", cost), "session_id": session,
                             "agent_id": agent, "parent_agent_id": parent,
                             "created_at": 86400.0 * 3 + i, "key_id": "k1",
                             "output_tokens": 10})
            await store.settle(rows, None, 0)
            top = await store.agent_totals(None, None, 1)
            assert {r["session_id"] for r in top} == {"s1"} and len(top) == 3
            everything = await store.agent_totals(None, None, 5)
            assert {r["session_id"] for r in everything} == {"s1", "s2", None}
            tree = agent_tree(top)
            assert [(r["agent_id"], r["subtree_pusd"]) for r in tree] == [
                (MAIN, 23), ("a", 18), ("b", 11)]
            (day,) = await store.usage_by_day(0, 86400.0 * 10)
            assert (day["day"], day["model"], day["key_id"]) == (
                "1970-01-04", "claude-haiku-4-5", "k1")
            assert int(day["cost_pusd"]) == 27 and int(day["output_tokens"]) == 50
        finally:
            await store.close()

    asyncio.run(run())
