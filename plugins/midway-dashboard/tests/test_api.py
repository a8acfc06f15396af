"""The JSON behind the panels: core-only traffic, and services read through their contract
(small in-test services stand in for audit, billing, cache and router here; the integration
suite in the repository's tests/ runs the real plugins)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import types
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from midway import hookimpl
from midway.fake_upstream import Reply
from midway.testing import FakeUpstream, RunningMidway, wait_for
from midway_dashboard import panels


def api(running: RunningMidway, path: str) -> Any:
    response = httpx.get(f"{running.url}/_midway/api/{path}")
    assert response.headers["cache-control"] == "no-store"
    return response.status_code, response.json()


def test_traffic_counts_real_requests(start_dashboard: Callable[..., RunningMidway],
                                      fake_upstream: FakeUpstream,
                                      sdk: Callable[..., anthropic.Anthropic]) -> None:
    running = start_dashboard()
    client = sdk(running)
    fake_upstream.reply(Reply(usage={"input_tokens": 11, "output_tokens": 7}))
    client.messages.create(model="claude-sonnet-4-6", max_tokens=16,
                           messages=[{"role": "user", "content": "hi"}])
    fake_upstream.reply(Reply(status=429, error_type="rate_limit_error",
                              headers={"retry-after": "1"}))
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=16,
                               messages=[{"role": "user", "content": "hi"}])
    # post_response (which feeds the window) may finish just after the client has its answer.
    wait_for(lambda: api(running, "traffic")[1]["total_all_workers"] == 2)
    wait_for(lambda: api(running, "traffic")[1]["total"] == 2)
    status, data = api(running, "traffic")
    assert status == 200
    assert data["requests"] == 2
    assert data["errors"] == 1 and data["by_status"] == {"2xx": 1, "4xx": 1}
    assert data["tokens"] == {"input": 11, "output": 7}
    assert data["open_streams"] == 0 and data["in_flight"] == 0
    assert data["workers"] == 1
    assert data["latency_ms"]["p50"] is not None
    assert data["recent_errors"][0]["error_type"] == "rate_limit_error"


def test_open_streams_are_shown_while_they_run(start_dashboard: Callable[..., RunningMidway],
                                                fake_upstream: FakeUpstream,
                                                sdk: Callable[..., anthropic.Anthropic]) -> None:
    running = start_dashboard()
    fake_upstream.reply(Reply(stall=30.0, ping_interval=0.2))
    client = sdk(running)
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=16,
                                messages=[{"role": "user", "content": "slow"}]) as stream:
        next(iter(stream))  # message_start has arrived: the stream is open
        wait_for(lambda: api(running, "traffic")[1]["open_streams"] == 1)
        assert api(running, "traffic")[1]["in_flight"] == 1
        stream.close()
    wait_for(lambda: api(running, "traffic")[1]["open_streams"] == 0)


def test_without_plugins_every_panel_says_not_installed(
        start_dashboard: Callable[..., RunningMidway]) -> None:
    running = start_dashboard()
    _, status = api(running, "status")
    assert {name: info["installed"] for name, info in status["panels"].items()} == {
        "audit": False, "billing": False, "cache": False, "router": False}
    for path, package in [("spend", "midway-billing"), ("cache", "midway-cache"),
                          ("upstreams", "midway-router"), ("requests", "midway-audit"),
                          ("requests/mw_x", "midway-audit")]:
        code, data = api(running, path)
        assert code == 200 and data["installed"] is False and data["package"] == package
        # none is loaded here; whether it is installed depends on the environment (nox
        # installs each plugin's tests beside core only)
        if distribution_installed(package):
            assert data["state"] == "not-loaded"
            assert data["notice"].startswith(f"{package} is installed but not loaded: ")
            assert "MIDWAY_PLUGINS" in data["notice"]
            assert "not installed" not in data["notice"]
        else:
            assert data["state"] == "not-installed"
            assert data["notice"].startswith(f"{package} is not installed: pip install")


def test_a_plugin_that_is_not_installed_says_how_to_install_it(
        start_dashboard: Callable[..., RunningMidway], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(panels.PROVIDERS, "vault", "midway-vault")
    running = start_dashboard()
    info = api(running, "status")[1]["panels"]["vault"]
    assert info["state"] == "not-installed"
    assert info["notice"].startswith("midway-vault is not installed: pip install midway-vault")


class Services:
    """Stand-ins with the contract's signatures, recording how they were called."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: set[str] = set()
        self.hang = False

    async def _record(self, name: str, **kwargs: Any) -> None:
        self.calls.append((name, kwargs))
        if name in self.fail:
            raise RuntimeError("database is down: password=hunter2")
        if self.hang:
            await asyncio.sleep(3600)

    def plugin(self) -> object:
        services = self

        class Billing:
            async def report(self, by: str, since: Any = None, until: Any = None) -> list[Any]:
                await services._record("report", by=by, since=since)
                return [{by: "search", "requests": 3, "cost_usd": "0.012300"}]

            async def spend_series(self, bucket: str = "hour", by: str = "team",
                                   since: Any = None) -> list[Any]:
                await services._record("spend_series", bucket=bucket, by=by, since=since)
                return [{"t": "2026-11-24T10:00:00+00:00", "key": "search",
                         "cost_usd": Decimal("0.0123")}]

            def pricing(self) -> dict[str, Any]:
                return {"version": "2026-12-05.1", "unknown_rule": "$5 / $25 per MTok",
                        "unknown_models": ["claude-zeta-9"]}

            async def agents(self, since: Any = None, until: Any = None,
                             top: int | None = None) -> list[Any]:
                await services._record("agents", since=since, top=top)
                tree = [("s-big", "(main)", 0, "1.5", "4"), ("s-big", "explore-1", 1, "2", "2.5"),
                        ("s-big", "grep-2", 2, "0.5", "0.5"), ("s-small", "(main)", 0, "1", "1")]
                return [{"session_id": s, "agent_id": a, "depth": d, "requests": 1,
                         "own_cost_usd": own, "subtree_cost_usd": sub}
                        for s, a, d, own, sub in tree]

            async def sessions(self, since: Any = None, until: Any = None, limit: int = 100,
                               principal: str | None = None, team: str | None = None
                               ) -> list[Any]:
                await services._record("sessions", since=since, limit=limit,
                                       principal=principal, team=team)
                return [{"session_id": f"s{i}", "turns": i} for i in range(3)][:limit]

            async def session(self, session_id: str, principal: str | None = None,
                              team: str | None = None) -> dict[str, Any] | None:
                await services._record("session", session_id=session_id)
                return {"session_id": "s1", "timeline": []} if session_id == "s1" else None

            async def budgets(self) -> list[Any]:
                await services._record("budgets")
                return [{"name": "daily", "scope": "team", "value": "search",
                         "limit_usd": "1.00", "spent_usd": "0.0123"}]

            async def batches(self, held_only: bool = False, limit: int = 100) -> list[Any]:
                await services._record("batches", held_only=held_only, limit=limit)
                return [{"batch_id": "msgbatch_1", "held_usd": "0.5"}]

        class Cache:
            async def stats(self) -> dict[str, Any]:
                await services._record("stats")
                return {"entries": 2, "hits": 3, "misses": 1, "bytes": 2048,
                        "saved_tokens": 90, "saved_usd": "0.0009"}

        class Router:
            def status(self) -> list[Any]:
                services.calls.append(("status", {}))
                return [{"upstream": "anthropic", "key": "ab12cd34ef56", "health": "ok"}]

        class Audit:
            async def query(self, **kwargs: Any) -> list[Any]:
                await services._record("query", **kwargs)
                return [{"id": "mw_1", "status": 200}]

            async def get(self, request_id: str) -> dict[str, Any] | None:
                await services._record("get", request_id=request_id)
                return {"id": "mw_1", "response_body": "{}"} if request_id == "mw_1" else None

        @hookimpl
        def startup(midway: Any) -> None:
            midway.services.update(billing=Billing(), cache=Cache(), router=Router(),
                                   audit=Audit())

        return types.SimpleNamespace(__name__="fake_services", startup=startup)


def test_panels_read_the_services(start_dashboard: Callable[..., RunningMidway]) -> None:
    services = Services()
    running = start_dashboard(("fake_services", services.plugin()))
    _, spend = api(running, "spend?by=team&bucket=day")
    assert spend["installed"] is True
    assert spend["series"] == [{"t": "2026-11-24T10:00:00+00:00", "key": "search",
                                "cost_usd": "0.0123"}]
    assert spend["report"][0]["team"] == "search" and spend["budgets"][0]["limit_usd"] == "1.00"
    assert spend["batches"] == [{"batch_id": "msgbatch_1", "held_usd": "0.5"}]
    assert spend["pricing"]["unknown_models"] == ["claude-zeta-9"]
    called = dict(services.calls)
    assert called["spend_series"]["bucket"] == "day" and called["spend_series"]["by"] == "team"
    assert isinstance(called["spend_series"]["since"], float)  # Billing takes unix seconds
    assert called["report"]["by"] == "team"
    assert called["batches"] == {"held_only": True, "limit": 20}  # only what still holds

    _, cache = api(running, "cache")
    assert cache["hit_rate"] == 0.75 and cache["stats"]["saved_usd"] == "0.0009"
    assert "hit_rate" in cache["window"]
    _, upstreams = api(running, "upstreams")
    assert upstreams["status"][0]["key"] == "ab12cd34ef56"

    _, found = api(running, "requests?text=capital&principal=alice&status=4xx&since=1h&limit=7")
    assert found["rows"] == [{"id": "mw_1", "status": 200}]
    query = dict(services.calls)["query"]
    assert {k: query[k] for k in ("text", "principal", "status", "limit")} == {
        "text": "capital", "principal": "alice", "status": "4xx", "limit": 7}
    assert isinstance(query["since"], datetime)
    assert api(running, "requests/mw_1") == (200, {"installed": True, "record": {
        "id": "mw_1", "response_body": "{}"}})
    code, missing = api(running, "requests/mw_nope")
    assert code == 404 and "no audit record" in missing["error"]


def test_sessions_panel_shows_each_session_tree(start_dashboard: Callable[..., RunningMidway],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from midway_dashboard import panels

    services = Services()
    running = start_dashboard(("fake_services", services.plugin()))
    monkeypatch.setattr(panels, "MAX_SESSIONS", 1)
    code, data = api(running, "sessions?bucket=day")
    assert code == 200 and data["installed"] is True
    [session] = data["sessions"]  # the costlier one; the other is counted, not shown
    assert session["session_id"] == "s-big" and session["cost_usd"] == "4"
    assert [(a["agent_id"], a["depth"]) for a in session["agents"]] == [
        ("(main)", 0), ("explore-1", 1), ("grep-2", 2)]
    assert data["more_sessions"] is True
    assert isinstance(dict(services.calls)["agents"]["since"], float)
    assert dict(services.calls)["agents"]["top"] == 2  # the store is asked for no more
    assert api(running, "sessions?bucket=year")[0] == 400


def test_claude_code_session_pages_read_billing(
        start_dashboard: Callable[..., RunningMidway]) -> None:
    services = Services()
    running = start_dashboard(("fake_services", services.plugin()))
    code, data = api(running, "claude-sessions?since=24h&team=search&principal=alice&limit=2")
    assert code == 200 and [s["session_id"] for s in data["sessions"]] == ["s0", "s1"]
    assert data["more"] is True  # one more asked for: whether there are others
    called = dict(services.calls)["sessions"]
    assert (called["team"], called["principal"], called["limit"]) == ("search", "alice", 3)
    assert isinstance(called["since"], float)
    assert api(running, "claude-sessions/s1") == (200, {
        "installed": True, "audit": True, "session": {"session_id": "s1", "timeline": []}})
    code, missing = api(running, "claude-sessions/s9")
    assert code == 404 and missing["error"] == "no session s9"
    # An id billing would never have kept is not looked up at all.
    services.calls.clear()
    for bad in ("%3Cscript%3E", "a" * 129, "..%2F..%2Fetc", "-x"):
        assert api(running, f"claude-sessions/{bad}")[0] == 404
    assert not services.calls
    for path in ("claude-sessions?since=1y", "claude-sessions?limit=all"):
        code, data = api(running, path)
        assert code == 400 and data["error"]["type"] == "invalid_request_error"
    # The pages: the session id goes into the page as escaped text only.
    page = httpx.get(f"{running.url}/_midway/sessions/%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert page.status_code == 200 and "<script>alert" not in page.text
    assert 'data-session-id="&quot;&gt;&lt;script&gt;' in page.text
    assert httpx.get(f"{running.url}/_midway/sessions").status_code == 200


def test_bad_parameters_are_refused(start_dashboard: Callable[..., RunningMidway]) -> None:
    running = start_dashboard(("fake_services", Services().plugin()))
    for path in ("spend?by=password", "spend?bucket=year", "requests?status=drop",
                 "requests?limit=many"):
        code, data = api(running, path)
        assert code == 400 and data["error"]["type"] == "invalid_request_error"


def test_a_failing_service_fails_only_its_panel(start_dashboard: Callable[..., RunningMidway],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    services = Services()
    running = start_dashboard(("fake_services", services.plugin()))
    services.fail = {"stats"}
    code, cache = api(running, "cache")
    assert code == 200 and cache["error"] == "cache.stats failed: RuntimeError"
    assert "hunter2" not in str(cache)  # the exception's text stays in the log
    assert api(running, "upstreams")[1]["status"]
    # A service that hangs is cut off instead of holding the page.
    monkeypatch.setattr(panels, "SERVICE_TIMEOUT", 0.2)
    services.fail, services.hang = set(), True
    code, spend = api(running, "spend")
    assert code == 200 and "did not answer" in spend["error"]


def distribution_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
