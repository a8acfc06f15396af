"""Session and subagent views: a Claude Code session's turns, subagents and cache breaks
(``midway billing sessions`` / ``midway billing session ID`` and the service behind the
dashboard's Sessions pages)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import anthropic
import orjson
import pytest
from click.testing import CliRunner
from helpers import PLUGIN, billing_of, ledger

from midway.cli import cli
from midway.testing import PromptCache, RecordedRequest, Reply
from midway_billing.sessions import MAIN, cache_breaks, fingerprint, summary, turns_of

SESSION = "0b9e2c4a-7d3f-4e1a-9c2b-5f6a7b8c9d0e"
SYSTEM = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.331; cch=1;"},
          {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}]
TOOLS = [{"name": "Bash", "description": "Run a command", "input_schema": {"type": "object"}}]


# -- the fingerprint ---------------------------------------------------------------------------

def test_fingerprint_ignores_the_attribution_line_and_moving_cache_markers() -> None:
    first = {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    marked = {"role": "user", "content": [{"type": "text", "text": "hi",
                                           "cache_control": {"type": "ephemeral"}}]}
    base = fingerprint({"system": SYSTEM, "tools": TOOLS, "messages": [marked]})
    # The attribution line changes (another cc_version) and the marker moved on: same prompt.
    other_line = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=9"},
                  SYSTEM[1]]
    assert fingerprint({"system": other_line, "tools": TOOLS,
                        "messages": [first, {"role": "assistant", "content": "x"}]}) == base
    changed = fingerprint({"system": [SYSTEM[0], {"type": "text", "text": "Be terse."}],
                           "tools": TOOLS, "messages": [first]})
    assert changed["system_hash"] != base["system_hash"]
    assert changed["tools_hash"] == base["tools_hash"]
    assert fingerprint({"system": SYSTEM, "tools": [{"name": "Read"}],
                        "messages": [first]})["tools_hash"] != base["tools_hash"]
    assert fingerprint("not a body") == dict.fromkeys(("system_hash", "tools_hash",
                                                       "thread_hash"))
    assert all(len(v) == 16 for v in base.values() if v)


# -- the detector, on crafted turns ------------------------------------------------------------

def turn(n: int, read: int, write: int, *, at: float | None = None, model: str = "m1",
         system: str = "s1", tools: str = "t1", upstream: str = "anthropic",
         agent: str | None = None, thread: str = "h1", ok: bool = True,
         uncached: int = 3, principal: str = "alice") -> dict[str, Any]:
    start = at if at is not None else 10.0 * n
    return {"exchange_id": f"ex{n}", "principal": principal, "created_at": start,
            "ended_at": start + 1, "agent_id": agent,
            "model": model, "system_hash": system, "tools_hash": tools, "upstream": upstream,
            "thread_hash": thread, "ok": ok, "input_tokens": uncached,
            "cache_read_tokens": read, "cache_write_5m_tokens": write,
            "cache_write_1h_tokens": 0, "output_tokens": 10}


def breaks(turns: list[dict[str, Any]]) -> list[tuple[str, str] | None]:
    cache_breaks(turns)
    return [(t["exchange_id"], t["cache_break"]["cause"]) if t["cache_break"] else None
            for t in turns]


def test_nothing_broke_when_each_turn_reads_what_the_last_one_left() -> None:
    turns = [turn(1, 0, 1000), turn(2, 1000, 200), turn(3, 1200, 300)]
    assert breaks(turns) == [None, None, None]


@pytest.mark.parametrize(("change", "cause"), [
    ({"system": "s2"}, "system"), ({"tools": "t2"}, "tools"), ({"model": "m2"}, "model"),
    ({"upstream": "bedrock"}, "upstream"), ({"system": "s2", "tools": "t2"}, "system+tools"),
])
def test_a_changed_prefix_part_is_named_as_the_cause(change: dict[str, str],
                                                    cause: str) -> None:
    turns = [turn(1, 0, 1000), turn(2, 1000, 200), turn(3, 0, 1300, **change)]
    assert breaks(turns) == [None, None, ("ex3", cause)]
    found = turns[2]["cache_break"]
    assert found["previous"] == "ex2" and found["lost_tokens"] == 1200
    if cause == "model":
        assert "(m1 -> m2)" in found["detail"]


def test_a_long_pause_is_an_expiry_and_no_change_is_unknown() -> None:
    expired = [turn(1, 0, 1000, at=0), turn(2, 0, 1100, at=1000)]
    assert breaks(expired) == [None, ("ex2", "expired")]
    assert "17 min" in expired[1]["cache_break"]["detail"]
    # Written with the 1-hour lifetime: 17 minutes later the prefix is still there.
    long_lived = [turn(1, 0, 0, at=0), turn(2, 0, 1100, at=1000)]
    long_lived[0]["cache_write_1h_tokens"] = 1000
    assert breaks(long_lived) == [None, ("ex2", "unknown")]
    unknown = [turn(1, 0, 1000, at=0), turn(2, 500, 600, at=30)]
    assert breaks(unknown) == [None, ("ex2", "unknown")]


def test_what_is_not_a_break() -> None:
    # A shorter prompt (a compacted conversation, a /clear) reads less without a break.
    assert breaks([turn(1, 0, 1000), turn(2, 0, 200, uncached=0)]) == [None, None]
    # Another agent's and another thread's turns are not compared with the main thread's.
    assert breaks([turn(1, 0, 1000), turn(2, 0, 1500, agent="sub-1", system="s9"),
                   turn(3, 0, 1200, thread="side", model="haiku"),
                   turn(4, 1000, 400)]) == [None, None, None, None]
    # Another principal naming the same session (and sending the same first message) with
    # another model: its turns are its own, alice's cache did not break.
    assert breaks([turn(1, 0, 1000), turn(2, 0, 1500, principal="mallory", model="m9"),
                   turn(3, 1000, 600)]) == [None, None, None]
    # A failed turn has no usage to compare; the next one is compared with the last answer.
    assert breaks([turn(1, 0, 1000), turn(2, 0, 0, ok=False, uncached=0),
                   turn(3, 1000, 100)]) == [None, None, None]
    # Nothing was cached: nothing to lose.
    assert breaks([turn(1, 0, 0, uncached=900), turn(2, 0, 0, uncached=1000)]) == [None, None]


# -- through midway: the SDK as Claude Code's stand-in -----------------------------------------

def body(model: str, system: list[dict[str, Any]], messages: list[dict[str, Any]]
         ) -> dict[str, Any]:
    return {"model": model, "max_tokens": 50, "system": system, "tools": TOOLS,
            "messages": messages}


def cached_replies(cache: PromptCache) -> Any:
    def reply(request: RecordedRequest) -> Reply:
        if request.json.get("metadata", {}).get("user_id") == "fail":
            return Reply(status=500, error_type="api_error", error_message="boom")
        return Reply(content=[{"type": "text", "text": "ok"}],
                     usage=cache.usage(request.json))
    return reply


KEYS = [{"key": "mw-alice-0123456789abcdef", "name": "alice", "team": "search"},
        {"key": "mw-mallory-0123456789abcdef", "name": "mallory", "team": "red"}]


def test_a_session_through_midway(midway_factory, fake_upstream, monkeypatch) -> None:
    running = midway_factory(plugins=[PLUGIN], config={"midway": {"client_keys": KEYS}})
    fake_upstream.fake.default = cached_replies(PromptCache())

    def client(key: str, **headers: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=running.url, api_key=key, max_retries=0,
                                   default_headers={"x-claude-code-session-id": SESSION,
                                                    **headers})

    alice = client(KEYS[0]["key"])
    sub = client(KEYS[0]["key"], **{"x-claude-code-agent-id": "explore-1"})
    convo: list[dict[str, Any]] = [{"role": "user", "content": "Look at the repo"}]
    alice.messages.create(**body("claude-sonnet-4-6", SYSTEM, convo))  # 1: writes the prefix
    convo += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "More"}]
    alice.messages.create(**body("claude-sonnet-4-6", SYSTEM, convo))  # 2: reads it
    sub.messages.create(**body("claude-haiku-4-5", [{"type": "text", "text": "Explorer"}], [
        {"role": "user", "content": "Explore"}]))  # 3: the subagent
    convo += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "Again"}]
    alice.messages.create(**body("claude-haiku-4-5", SYSTEM, convo))  # 4: model changed
    with pytest.raises(anthropic.InternalServerError):  # 5: an error
        alice.messages.create(**body("claude-haiku-4-5", SYSTEM, convo),
                              metadata={"user_id": "fail"})
    # Mallory names alice's session: her request is hers, not in alice's team's view.
    client(KEYS[1]["key"]).messages.create(**body("claude-haiku-4-5", SYSTEM, convo))
    alice.messages.count_tokens(model="claude-haiku-4-5", messages=convo)  # no turn
    # Outside a session nothing is hashed (the fingerprint costs a few hundred microseconds).
    anthropic.Anthropic(base_url=running.url, api_key=KEYS[0]["key"], max_retries=0
                        ).messages.create(**body("claude-haiku-4-5", SYSTEM, convo))
    rows = ledger(running, 8)
    fingerprinted = [r["path"] for r in rows if r["system_hash"]]
    assert fingerprinted == ["/v1/messages"] * 6
    assert all(r["tools_hash"] and r["thread_hash"] for r in rows if r["system_hash"])
    billing = billing_of(running)

    found = running.call(billing.session(SESSION))
    assert found["turns"] == 6 and found["principals"] == 2 and found["errors"] == 1
    timeline = found["timeline"]
    assert [t["agent_id"] for t in timeline] == [None, None, "explore-1", None, None, None]
    flagged = [(t["turn"], t["cache_break"]["cause"]) for t in timeline if t["cache_break"]]
    assert flagged == [(4, "model")]
    assert timeline[1]["cache_read_tokens"] > 0 and timeline[3]["cache_read_tokens"] == 0
    assert sum(Decimal(t["cost_usd"]) for t in timeline) == Decimal(found["cost_usd"]) > 0
    agents = {a["agent_id"]: a for a in found["subagents"]}
    assert set(agents) == {MAIN, "explore-1"}
    assert Decimal(agents["explore-1"]["own_cost_usd"]) == \
        Decimal(timeline[2]["cost_usd"]) > 0
    assert Decimal(agents[MAIN]["subtree_cost_usd"]) == Decimal(found["cost_usd"])

    # The list gives the same figures as the session's page.
    [listed] = running.call(billing.sessions())
    for key in ("turns", "errors", "cost_usd", "cache_read_share", "input_tokens",
                "cache_read_tokens", "principals", "agents"):
        assert listed[key] == found[key], key
    assert listed["started_at"] == found["started_at"]

    # Scoped to a team, a session holds that team's requests only.
    red = running.call(billing.session(SESSION, team="red"))
    assert red["turns"] == 1 and red["principal_name"] == "mallory"
    search = running.call(billing.session(SESSION, team="search"))
    assert search["turns"] == 5 and search["principals"] == 1
    assert running.call(billing.session(SESSION, team="nobody")) is None
    assert running.call(billing.sessions(team="nobody")) == []
    # A long session is read up to a bound, and says so.
    short = running.call(billing.session(SESSION, max_rows=2))
    assert short["truncated"] is True and short["turns"] == 2
    assert found["truncated"] is False
    # An id that is a payload finds nothing (it is a parameter, never SQL).
    assert running.call(billing.session("' OR '1'='1")) is None

    monkeypatch.setenv("MIDWAY_PLUGINS", "billing")
    data_dir = str(running.midway.settings.data_dir)
    runner = CliRunner()
    out = runner.invoke(cli, ["billing", "sessions", "--data-dir", data_dir, "--wide"])
    assert out.exit_code == 0, out.output
    assert SESSION in out.output and found["cost_usd"] in out.output
    out = runner.invoke(cli, ["billing", "session", SESSION, "--data-dir", data_dir,
                              "--wide"])
    assert out.exit_code == 0, out.output
    assert "1 cache break(s)" in out.output and "model: the model changed" in out.output
    assert "explore-1" in out.output
    out = runner.invoke(cli, ["billing", "session", SESSION, "--json", "--team", "red",
                              "--data-dir", data_dir])
    assert orjson.loads(out.output)["turns"] == 1
    out = runner.invoke(cli, ["billing", "sessions", "--json", "--data-dir", data_dir])
    assert [r["session_id"] for r in orjson.loads(out.output)] == [SESSION]
    out = runner.invoke(cli, ["billing", "session", "nope", "--data-dir", data_dir])
    assert out.exit_code == 1 and "no session 'nope'" in out.output


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_session_queries_on_both_stores(backend, tmp_path, request) -> None:
    from test_reconcile import settled, table_for

    from midway.options import load_table
    from midway_billing.config import BillingConfig

    table = table_for(backend, request)

    async def run() -> None:
        store = load_table(BillingConfig, "billing", table, data_dir=tmp_path).make_store()
        await store.open()
        try:
            rows = []
            for i, (session, status, error, read, write, model) in enumerate([
                    ("s1", 200, None, 0, 1000, "m1"), ("s1", 200, None, 1000, 100, "m1"),
                    ("s1", 200, None, 0, 1200, "m2"), ("s1", 529, "overloaded", 0, 0, "m2"),
                    ("s2", 200, None, 0, 10, "m1"), (None, 200, None, 0, 10, "m1")]):
                rows.append({**settled(store, f"ex{i}.1", f"ex{i}", 5 + i),
                             "session_id": session, "status": status, "error": error,
                             "cache_read_tokens": read, "cache_write_5m_tokens": write,
                             "input_tokens": 3, "model": model, "created_at": 100.0 + i,
                             "settled_at": 100.5 + i, "thread_hash": "h", "system_hash": "s",
                             "tools_hash": "t"})
            # A retried attempt of ex1 (dropped) and a price correction of ex0.
            rows.append({**settled(store, "ex1.0", "ex1", 0), "attempt": 0,
                         "session_id": "s1", "status": 529, "error": "retried",
                         "created_at": 101.0})
            rows.append({**settled(store, "ex0.1~1", "ex0", 2), "kind": "reprice",
                         "session_id": "s1", "created_at": 100.0, "corrects": "ex0.1"})
            await store.settle(rows, None, 0)
            listed = await store.session_list(None, None, 10)
            assert [r["session_id"] for r in listed] == ["s2", "s1"]
            s1 = listed[1]
            assert int(s1["turns"]) == 4 and int(s1["turns"]) - int(s1["ok_turns"]) == 1
            assert int(s1["cost_pusd"]) == 5 + 6 + 7 + 8 + 2
            turns = turns_of([dict(r) for r in await store.session_rows("s1", 100)])
            total = summary(turns)
            assert total["errors"] == 1 and total["cost_pusd"] == int(s1["cost_pusd"])
            assert [t["attempts"] for t in turns] == [1, 2, 1, 1]
            assert [bool(t["cache_break"]) for t in turns] == [False, False, True, False]
            assert len(await store.session_list(None, None, 1)) == 1
            assert await store.session_list(50.0, 99.0, 10) == []
            assert len(await store.session_rows("s1", 2)) == 2
        finally:
            await store.close()

    asyncio.run(run())
