"""Attack on the pooled keys through a real ``midway serve`` (#17 item 5): one client request
on a path of its choosing, answered 401 upstream, must not take the pool's keys out of
rotation; Anthropic's admin API is not reached with pooled keys unless a rule allows it."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from hardening_support import MSG, Server, get_json

from midway.fake_upstream import FakeAnthropic, _error
from midway.testing import FakeUpstream, Reply

KEYS = ["sk-ant-pool-a-5c1d", "sk-ant-pool-b-77e2", "sk-ant-pool-c-0a93"]
ATTACK = "one client request takes every pooled key out of rotation"


class AdminRefusingUpstream(FakeAnthropic):
    """Anthropic as a pooled (non-admin) key meets it: every route but inference refuses the
    key with 401 ``authentication_error``, as the admin API does."""

    async def _other(self, request: web.Request) -> web.Response:
        await self._record(request)
        return _error(401, "authentication_error", "invalid x-api-key").response()


def config(url: str, rule: str = "") -> str:
    keys = ", ".join(f'"{k}"' for k in KEYS)
    return f"""
[midway]
plugins = ["router"]

[router]
upstreams = [{{ name = "anthropic", url = "{url}", keys = [{keys}] }}]
{rule}
"""


def call(server: Server, method: str, path: str, body: Any = None
         ) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=None if body is None else orjson.dumps(body),
                     headers={"content-type": "application/json",
                              "anthropic-version": "2023-06-01"})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            return resp.status, {"raw": raw.decode(errors="replace")}
    finally:
        conn.close()


def health(server: Server) -> list[str]:
    return [row["health"] for row in get_json(server.url + "/_midway/router/status")]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream(AdminRefusingUpstream()).start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
def pooled(tmp_path: Path, upstream: FakeUpstream) -> Iterator[Server]:
    running = Server(tmp_path, config(upstream.url), upstream.url)
    try:
        yield running.start()
    finally:
        running.ensure_stopped()


@pytest.mark.attack(5, ATTACK)
def test_admin_api_is_not_reached_with_pooled_keys(pooled: Server,
                                                   upstream: FakeUpstream) -> None:
    for _ in range(3):
        status, answer = call(pooled, "GET", "/v1/organizations/me")
        assert status == 403 and answer["error"]["type"] == "permission_error", answer
        assert "admin_api = true" in answer["error"]["message"]
    assert upstream.requests == []
    assert health(pooled) == ["ok", "ok", "ok"]


@pytest.mark.attack(5, ATTACK)
def test_a_401_on_a_path_the_client_chose_disables_no_key(pooled: Server,
                                                          upstream: FakeUpstream) -> None:
    for path in ("/v1/files", "/v1/models/claude-sonnet-4-6", "/v1/skills"):
        status, answer = call(pooled, "GET", path)
        assert status == 401, (path, status, answer)  # the upstream's answer, relayed
    assert health(pooled) == ["ok", "ok", "ok"]
    status, answer = call(pooled, "POST", "/v1/messages", MSG)
    assert status == 200, answer


@pytest.mark.attack(5, ATTACK)
def test_a_401_without_anthropics_error_disables_no_key(pooled: Server,
                                                        upstream: FakeUpstream) -> None:
    # e.g. a proxy between midway and Anthropic: its 401 says nothing about the key
    upstream.reply(*[Reply(status=401, body=b"<html>401 Authorization Required</html>")] * 3)
    status, _ = call(pooled, "POST", "/v1/messages", MSG)
    assert status == 401
    assert health(pooled) == ["ok", "ok", "ok"]


def test_a_bad_key_is_still_taken_out_on_evidence(pooled: Server,
                                                  upstream: FakeUpstream) -> None:
    upstream.reply(Reply(status=401, error_type="authentication_error",
                         error_message="invalid x-api-key"))
    status, answer = call(pooled, "POST", "/v1/messages", MSG)
    assert status == 200, answer  # retried on another key
    assert sorted(health(pooled)) == ["disabled", "ok", "ok"]


def test_a_rule_may_allow_the_admin_api(tmp_path: Path, upstream: FakeUpstream) -> None:
    rule = """
[[router.rules]]
name = "admin"
match = { path = "/v1/organizations/*" }
target = "anthropic"
admin_api = true
"""
    server = Server(tmp_path, config(upstream.url, rule), upstream.url)
    try:
        server.start()
        status, _ = call(server, "GET", "/v1/organizations/me")
        assert status == 401  # forwarded; the upstream's refusal is relayed
        assert [r.path for r in upstream.requests] == ["/v1/organizations/me"]
        assert health(server) == ["ok", "ok", "ok"]
    finally:
        server.ensure_stopped()
