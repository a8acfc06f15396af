"""Who may see the dashboard: admin key (header or login session), loopback otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from midway.storage import StoreURL
from midway.testing import RunningMidway
from midway_dashboard.access import COOKIE, Access, Verdict
from midway_dashboard.sessions import Sessions

ADMIN = "adm-0123456789abcdef"
CLIENT = "mw-client-key-alice"


def remote_request(remote: str, host: str = "127.0.0.1:8910", **headers: str) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: \
        (remote, 40000) if name == "peername" else default
    return make_mocked_request("GET", "/_midway/", headers={"host": host, **headers},
                               transport=transport)


def check(access: Access, request: web.Request) -> Verdict:
    return asyncio.run(access.check(request))


def test_without_admin_key_only_loopback_clients_see_it() -> None:
    access = Access(None, None)
    assert check(access, remote_request("127.0.0.1")) is Verdict.ALLOW
    assert check(access, remote_request("::1", host="[::1]:8910")) is Verdict.ALLOW
    assert check(access, remote_request("203.0.113.9")) is Verdict.HIDDEN
    assert check(access, remote_request("10.1.2.3")) is Verdict.HIDDEN
    # A page on another site whose name resolves to 127.0.0.1 (DNS rebinding).
    rebound = remote_request("127.0.0.1", host="evil.example:8910")
    assert check(access, rebound) is Verdict.HIDDEN
    # No key can unlock what has no key.
    keyed = remote_request("203.0.113.9", authorization="Bearer x")
    assert check(access, keyed) is Verdict.HIDDEN


def test_with_admin_key_remote_clients_need_it() -> None:
    access = Access(ADMIN, None)
    assert check(access, remote_request("203.0.113.9")) is Verdict.LOGIN
    assert check(access, remote_request("127.0.0.1")) is Verdict.LOGIN
    ok = remote_request("203.0.113.9", authorization=f"Bearer {ADMIN}")
    assert check(access, ok) is Verdict.ALLOW
    header = remote_request("203.0.113.9", **{"x-api-key": ADMIN})
    assert check(access, header) is Verdict.ALLOW
    longer = remote_request("203.0.113.9", **{"x-api-key": ADMIN + "x"})
    assert check(access, longer) is Verdict.LOGIN


def test_sessions_live_in_the_store_and_end_there(tmp_path: Path) -> None:
    asyncio.run(_sessions_live_in_the_store_and_end_there(tmp_path))


async def _sessions_live_in_the_store_and_end_there(tmp_path: Path) -> None:
    store = StoreURL("sqlite", path=tmp_path / "dashboard.db")
    sessions = Sessions(store, ADMIN, lifetime=60)
    await sessions.open()
    try:
        token = await sessions.create()
        assert await sessions.valid(token)
        assert not await sessions.valid(token[:-1] + ("A" if token[-1] != "A" else "B"))
        assert not await sessions.valid("garbage")
        # The store holds a keyed digest, never the token itself.
        rows = await sessions.db.fetch("SELECT id FROM midway_dashboard_sessions")
        assert token not in str(rows)
        # Another admin key (rotation) ends every session.
        rotated = Sessions(store, ADMIN + "-rotated", lifetime=60)
        await rotated.open()
        assert not await rotated.valid(token)
        await rotated.close()
        await sessions.end(token)
        assert not await sessions.valid(token)
        expired = Sessions(store, ADMIN, lifetime=0)
        await expired.open()
        assert not await expired.valid(await expired.create())
        await expired.close()
    finally:
        await sessions.close()


def test_loopback_without_admin_key(start_dashboard: Callable[..., RunningMidway]) -> None:
    running = start_dashboard()
    page = httpx.get(f"{running.url}/_midway/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert httpx.get(f"{running.url}/_midway/api/traffic").status_code == 200
    assert httpx.get(f"{running.url}/_midway", follow_redirects=False).headers["location"] \
        == "/_midway/"
    # DNS rebinding: same socket, foreign Host → indistinguishable from an unknown path.
    hidden = httpx.get(f"{running.url}/_midway/api/traffic", headers={"host": "evil.example"})
    unknown = httpx.get(f"{running.url}/nothing-here")
    assert hidden.status_code == unknown.status_code == 404
    assert orjson.loads(hidden.content)["error"]["type"] == "not_found_error"


@pytest.fixture
def protected(start_dashboard: Callable[..., RunningMidway], monkeypatch: pytest.MonkeyPatch
              ) -> RunningMidway:
    monkeypatch.setenv("MIDWAY_TEST_DASHBOARD_ADMIN", ADMIN)
    return start_dashboard(admin_key="env:MIDWAY_TEST_DASHBOARD_ADMIN", config={
        "midway": {"client_keys": [{"key": CLIENT, "name": "alice", "team": "search"}]}})


def test_admin_key_protects_pages_and_api(protected: RunningMidway) -> None:
    url = protected.url
    page = httpx.get(f"{url}/_midway/spend")
    assert page.status_code == 401
    assert 'name="key"' in page.text and 'value="/_midway/spend"' in page.text
    api = httpx.get(f"{url}/_midway/api/traffic")
    assert api.status_code == 401
    assert orjson.loads(api.content)["error"]["type"] == "authentication_error"
    for headers in ({"authorization": f"Bearer {ADMIN}"}, {"x-api-key": ADMIN}):
        assert httpx.get(f"{url}/_midway/api/traffic", headers=headers).status_code == 200
    # A client key lets its holder spend, not read everyone's traffic.
    for headers in ({"authorization": f"Bearer {CLIENT}"}, {"x-api-key": CLIENT},
                    {"authorization": "Bearer wrong"}):
        assert httpx.get(f"{url}/_midway/api/traffic", headers=headers).status_code == 401
    # The Sessions pages and their JSON too: every session of every user is behind the key.
    for path in ("/_midway/sessions", "/_midway/sessions/s1", "/_midway/api/claude-sessions",
                 "/_midway/api/claude-sessions/s1"):
        assert httpx.get(f"{url}{path}").status_code == 401
        assert httpx.get(f"{url}{path}", headers={"x-api-key": CLIENT}).status_code == 401
    # The login page and the static files it needs are reachable without the key.
    assert httpx.get(f"{url}/_midway/login").status_code == 200
    assert httpx.get(f"{url}/_midway/static/dashboard.css").status_code == 200
    assert httpx.get(f"{url}/_midway/static/../app.py").status_code == 404


def test_login_sets_a_session_cookie_and_logout_ends_it(protected: RunningMidway) -> None:
    url = protected.url
    with httpx.Client(base_url=url) as client:
        wrong = client.post("/_midway/login", data={"key": CLIENT, "next": "/_midway/cache"})
        assert wrong.status_code == 401 and "not the admin key" in wrong.text
        assert COOKIE not in client.cookies
        ok = client.post("/_midway/login", data={"key": ADMIN, "next": "/_midway/cache"})
        assert ok.status_code == 303 and ok.headers["location"] == "/_midway/cache"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/_midway/" in cookie
        assert ADMIN not in cookie
        assert client.get("/_midway/api/status").status_code == 200
        assert client.get("/_midway/cache").status_code == 200
        session = client.cookies[COOKIE]
        out = client.post("/_midway/logout")
        assert out.status_code == 303
        assert client.get("/_midway/api/status").status_code == 401
    # A copy of the cookie taken before logging out is worthless: the session ended server-side.
    copied = httpx.get(f"{url}/_midway/api/status", cookies={COOKIE: session})
    assert copied.status_code == 401


def test_login_reads_only_a_small_form(protected: RunningMidway) -> None:
    big = httpx.post(f"{protected.url}/_midway/login", data={"key": "x" * 20_000})
    assert big.status_code == 413


def test_login_redirects_only_inside_the_dashboard(protected: RunningMidway) -> None:
    for target in ("https://evil.example/", "//evil.example/", "/_midway//evil.example",
                   "/v1/messages"):
        ok = httpx.post(f"{protected.url}/_midway/login", data={"key": ADMIN, "next": target})
        assert ok.headers["location"] == "/_midway/"


def test_repeated_failed_logins_slow_guesses_but_never_lock_out_the_key(
        start_dashboard: Callable[..., RunningMidway], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDWAY_TEST_DASHBOARD_ADMIN", ADMIN)
    running = start_dashboard(admin_key="env:MIDWAY_TEST_DASHBOARD_ADMIN", config={
        "dashboard": {"free_attempts": 3, "attempt_spacing": 0.3, "attempt_max_wait": 0.5}})
    login = f"{running.url}/_midway/login"
    statuses = [httpx.post(login, data={"key": f"guess{i}"}).status_code for i in range(3)]
    assert statuses == [401] * 3
    limiter = running.midway.services["dashboard"].limiter
    assert limiter.limited("127.0.0.1")
    # Past the free attempts, the right key still logs in.
    assert httpx.post(login, data={"key": ADMIN}).status_code == 303
    assert httpx.get(f"{running.url}/_midway/api/status",
                     headers={"x-api-key": ADMIN}).status_code == 200


def test_unresolvable_admin_key_stops_start_up(start_dashboard: Callable[..., RunningMidway],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIDWAY_TEST_DASHBOARD_MISSING", raising=False)
    with pytest.raises(Exception, match="dashboard"):
        start_dashboard(admin_key="env:MIDWAY_TEST_DASHBOARD_MISSING")
