"""Attacks on the request path through a real ``midway serve`` (#17 items 3 and 6): other
spellings of ``/v1/messages`` must not skip a hard budget, and ``..`` must not leave an
upstream URL's path prefix with the gateway's key."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hardening_support import MSG, UPSTREAM_CANARY, Server

from midway.testing import FakeUpstream

# Every spelling the review forwarded after a refusal, and their neighbours.
SPELLINGS = [
    "/v1/messages/", "//v1/messages", "/v1//messages", "/v1/./messages", "/v1/x/../messages",
    "/v1/%6Dessages", "/v1/%6dessages", "/v1/%2e/messages", "/v1/%2E/messages",
    "/%761/messages", "/v1/messages%2F", "/V1/Messages", "/v1/MESSAGES", "/v1/messages/.",
    "/v1/messages/x/..", "/v1/messages;x", "/v1/./messages?beta=true", "/v1/messages/?beta=true",
    "/./v1/messages", "/x/../v1/messages", "/v1/%2e%2e/v1/messages",
]
HARD_BUDGET = """
[midway]
plugins = ["billing"]

[[billing.budgets]]
name = "everything"
scope = "all"
period = "total"
limit_usd = "0.0001"
mode = "hard"
"""


def post(server: Server, path: str, body: bytes, method: str = "POST"
         ) -> tuple[int, dict[str, object]]:
    """Send ``path`` byte for byte (http.client does not tidy it up)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={
            "x-api-key": "sk-ant-client-own-key", "content-type": "application/json",
            "anthropic-version": "2023-06-01"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, orjson.loads(raw) if raw else {}
    finally:
        conn.close()


@pytest.fixture
def budgeted(tmp_path: Path, fake_upstream: FakeUpstream) -> Iterator[Server]:
    running = Server(tmp_path, HARD_BUDGET, fake_upstream.url)
    try:
        yield running.start()
    finally:
        running.ensure_stopped()


@pytest.mark.attack(3, "other spellings of /v1/messages skip hard budgets")
def test_no_spelling_of_messages_passes_a_refusing_budget(
        budgeted: Server, fake_upstream: FakeUpstream) -> None:
    body = orjson.dumps(MSG)
    status, answer = post(budgeted, "/v1/messages", body)
    assert status == 429, answer  # the budget refuses the request's estimate
    for path in SPELLINGS:
        status, answer = post(budgeted, path, body)
        assert status == 400, (path, status, answer)
        error = answer["error"]
        assert isinstance(error, dict) and error["type"] == "invalid_request_error", answer
        assert "normal form" in error["message"], answer
    assert fake_upstream.requests == [], [r.path for r in fake_upstream.requests]


@pytest.mark.attack(3, "other spellings of /v1/messages skip hard budgets")
def test_the_refusal_names_the_spelling_to_use(budgeted: Server) -> None:
    status, answer = post(budgeted, "/v1/%6Dessages/count_tokens", b"{}")
    assert status == 400
    error = answer["error"]
    assert isinstance(error, dict)
    assert error["message"].endswith("use /v1/messages/count_tokens"), error


PREFIXED = """
[midway]
plugins = []
upstream_api_key = "env:HARDEN_UPSTREAM_KEY"
client_keys = [{ key = "env:HARDEN_CLIENT_KEY", name = "alice" }]
"""


@pytest.mark.attack(6, "'..' in the path escapes the upstream URL's path prefix")
def test_dot_segments_never_leave_the_upstream_prefix(
        tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    from hardening_support import CLIENT_CANARY

    server = Server(tmp_path, PREFIXED, fake_upstream.url + "/tenant-a/")
    try:
        server.start()
        escapes = ["/v1/../../admin", "/v1/%2e%2e/%2e%2e/admin", "/v1/..%2F..%2Fadmin",
                   "/v1/models/..", "/v1/%2E%2E/%2E%2E/tenant-b/v1/messages"]
        for path in escapes:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", path, headers={"x-api-key": CLIENT_CANARY})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            assert resp.status == 400, (path, resp.status)
        assert fake_upstream.requests == [], [r.path for r in fake_upstream.requests]
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/v1/models?limit=5", headers={"x-api-key": CLIENT_CANARY})
        conn.getresponse().read()
        conn.close()
        [seen] = fake_upstream.requests
        assert seen.path == "/tenant-a/v1/models" and seen.query == "limit=5"
        assert seen.headers["x-api-key"] == UPSTREAM_CANARY
    finally:
        server.ensure_stopped()
