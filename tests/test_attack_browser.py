"""Attack from a web page through a real ``midway serve`` without client keys (#17 item 7): a
page whose name resolves to 127.0.0.1 (DNS rebinding) or a cross-site "simple" POST must not
spend the gateway's pooled keys, nor read ``/metrics``."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hardening_support import MSG, UPSTREAM_CANARY, Server

from midway.testing import FakeUpstream

ATTACK = "without client keys, a web page can spend the pooled keys"


def config(url: str, extra: str = "") -> str:
    return f"""
[midway]
plugins = ["router"]
{extra}

[router]
upstreams = [{{ name = "anthropic", url = "{url}", keys = ["env:HARDEN_UPSTREAM_KEY"] }}]
"""


def send(server: Server, method: str, path: str, headers: dict[str, str],
         body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("content-length", str(len(body or b"")))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def gateway(tmp_path: Path, fake_upstream: FakeUpstream) -> Iterator[Server]:
    running = Server(tmp_path, config(fake_upstream.url), fake_upstream.url)
    try:
        yield running.start()
    finally:
        running.ensure_stopped()


BODY = orjson.dumps(MSG)
# What a browser sends: a page on evil.example whose name now resolves to 127.0.0.1 ...
REBOUND = {"host": "evil.example:8910", "origin": "http://evil.example:8910",
           "sec-fetch-site": "same-origin", "content-type": "application/json"}
# ... and a cross-site form/fetch POST with a "simple" content type (no CORS preflight).
CROSS_SITE = [
    {"origin": "https://evil.example", "sec-fetch-site": "cross-site",
     "content-type": "text/plain"},
    {"origin": "null", "content-type": "text/plain"},  # a sandboxed iframe
    {"sec-fetch-site": "cross-site", "content-type": "application/x-www-form-urlencoded"},
]


@pytest.mark.attack(7, ATTACK)
def test_dns_rebinding_spends_nothing_and_reads_no_metrics(
        gateway: Server, fake_upstream: FakeUpstream) -> None:
    status, answer = send(gateway, "POST", "/v1/messages", REBOUND, BODY)
    assert status == 403, answer
    error = orjson.loads(answer)["error"]
    assert error["type"] == "permission_error" and "allowed_hosts" in error["message"]
    status, answer = send(gateway, "GET", "/metrics", {"host": "evil.example:8910"})
    assert status == 403 and b"midway_requests" not in answer
    assert fake_upstream.requests == []


@pytest.mark.attack(7, ATTACK)
def test_cross_site_posts_spend_nothing(gateway: Server, fake_upstream: FakeUpstream) -> None:
    for headers in CROSS_SITE:
        status, answer = send(gateway, "POST", "/v1/messages?beta=true",
                              {"host": f"127.0.0.1:{gateway.port}", **headers}, BODY)
        assert status == 403, (headers, answer)
        assert "allowed_origins" in answer.decode() or "Sec-Fetch-Site" in answer.decode()
    assert fake_upstream.requests == []


@pytest.mark.attack(7, ATTACK)
def test_local_tools_still_pass(gateway: Server, fake_upstream: FakeUpstream) -> None:
    for host in (f"127.0.0.1:{gateway.port}", f"localhost:{gateway.port}",
                 f"[::1]:{gateway.port}"):
        status, answer = send(gateway, "POST", "/v1/messages",
                              {"host": host, "content-type": "application/json"}, BODY)
        assert status == 200, (host, answer)
    assert [r.headers["x-api-key"] for r in fake_upstream.requests] == [UPSTREAM_CANARY] * 3
    status, _ = send(gateway, "GET", "/metrics", {"host": f"localhost:{gateway.port}"})
    assert status == 200


def test_configured_hosts_and_origins_pass(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    extra = ('allowed_hosts = ["gateway.internal"]\n'
             'allowed_origins = ["https://console.internal"]')
    server = Server(tmp_path, config(fake_upstream.url, extra), fake_upstream.url)
    try:
        server.start()
        status, answer = send(server, "POST", "/v1/messages", {
            "host": "gateway.internal", "origin": "https://console.internal",
            "sec-fetch-site": "cross-site", "content-type": "application/json"}, BODY)
        assert status == 200, answer
        status, _ = send(server, "POST", "/v1/messages", {
            "host": "gateway.internal", "origin": "https://evil.example",
            "content-type": "application/json"}, BODY)
        assert status == 403
        status, _ = send(server, "POST", "/v1/messages", {
            "host": "evil.example", "content-type": "application/json"}, BODY)
        assert status == 403
        assert len(fake_upstream.requests) == 1
    finally:
        server.ensure_stopped()
