"""Bad input against the whole stack: audit, billing, cache, router (pooled keys), dashboard and
the key store, all on, in a ``midway serve`` process.

Each bad input gets a clear Anthropic-format error or passes through literally; never a 500,
never a crash, never a credential in the answer. The last test sends traffic through every path
and then looks for the canary credentials everywhere midway writes or answers.
"""

from __future__ import annotations

import asyncio
import gzip
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from hardening_support import (
    ADMIN_CANARY,
    CLIENT_CANARY,
    MSG,
    UPSTREAM_CANARY,
    UPSTREAM_CANARY_2,
    Server,
)

from midway.testing import FakeUpstream, Reply, wait_for

POOL = {UPSTREAM_CANARY, UPSTREAM_CANARY_2}


def stack_config(upstream: str) -> str:
    return f"""
[midway]
plugins = ["audit", "billing", "cache", "router", "dashboard"]
admin_key = "env:HARDEN_ADMIN_KEY"
upstream_api_key = "env:HARDEN_UPSTREAM_KEY"
access_log = true
log_format = "json"
log_level = "DEBUG"
shutdown_timeout = 10

[[midway.client_keys]]
key = "env:HARDEN_CLIENT_KEY"
name = "alice"
team = "search"

[keys]
enabled = true

[audit]
jsonl = "audit.jsonl"
sqlite_synchronous = "normal"

[cache]
store = "sqlite"
rules = [{{ model = "*" }}]

[router]
rest_base = 0.2

[[router.upstreams]]
name = "anthropic"
url = "{upstream}"
keys = ["env:HARDEN_UPSTREAM_KEY", "env:HARDEN_UPSTREAM_KEY_2"]
"""


class Stack:
    def __init__(self, server: Server, fake: FakeUpstream, trap: FakeUpstream,
                 store_secret: str) -> None:
        self.server = server
        self.fake = fake
        self.trap = trap  # a second fake: any request reaching it was redirected
        self.store_secret = store_secret
        self.seen: list[bytes] = []  # every answer (status line, headers, body) we got

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        async def go() -> tuple[int, dict[str, str], bytes]:
            async with aiohttp.ClientSession(auto_decompress=False) as s, s.request(
                    method, self.url + path, data=body, headers=headers or {},
                    allow_redirects=False) as r:
                data = await r.read()
                return r.status, {k.lower(): v for k, v in r.headers.items()}, data
        status, hdrs, data = asyncio.run(go())
        self.seen.append(f"{status} {hdrs}".encode() + data)
        return status, hdrs, data

    def post(self, body: bytes, headers: dict[str, str] | None = None,
             path: str = "/v1/messages") -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", path, body, headers or {"x-api-key": CLIENT_CANARY})

    def raw(self, data: bytes) -> bytes:
        """Send bytes as they are (for what aiohttp's client refuses to send)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(data)  # every request says Connection: close (or is HTTP/1.0)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        answer = b"".join(chunks)
        self.seen.append(answer)
        return answer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("hardening-input")
    fake, trap = FakeUpstream().start(), FakeUpstream().start()
    server = Server(tmp, stack_config(fake.url), fake.url)
    try:
        created = server.cli("keys", "create", "--name", "bob", "--team", "infra", "--json")
        assert created.returncode == 0, created.stderr
        secret = orjson.loads(created.stdout)["secret"]
        server.start()
        yield Stack(server, fake, trap, secret)  # type: ignore[arg-type]
    finally:
        server.ensure_stopped()
        fake.stop()
        trap.stop()


def error_of(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)
    assert data["type"] == "error", data
    return data["error"]  # type: ignore[no-any-return]


def test_client_supplied_urls_cannot_redirect_traffic_or_credentials(stack: Stack) -> None:
    trap = stack.trap.url
    trap_host = trap.split("//")[1]
    before = len(stack.fake.messages_requests)
    fields = {"base_url": trap, "url": trap + "/v1/messages", "upstream": trap,
              "api_base": trap, "endpoint": trap}
    bodies = iter(orjson.dumps({**MSG, **fields, "max_tokens": n}) for n in range(1, 10))
    attempts = [
        {"x-forwarded-host": trap_host, "x-forwarded-proto": "http", "x-upstream": trap},
        {"forwarded": f"host={trap_host};proto=http", "x-original-url": trap + "/v1/messages",
         "x-rewrite-url": trap + "/v1/messages", "x-real-ip": "127.0.0.1"},
        {"x-midway-upstream": trap, "x-anthropic-base-url": trap, "via": trap_host,
         "anthropic-base-url": trap, "x-forwarded-for": trap_host},
    ]
    for extra in attempts:
        status, _, _ = stack.post(next(bodies), {"x-api-key": CLIENT_CANARY, **extra})
        assert status == 200
    status, _, _ = stack.post(next(bodies),
                              path=f"/v1/messages?upstream={trap}&base_url={trap}")
    assert status == 200
    # Absolute-form request target and a Host naming the trap.
    body = next(bodies)
    answer = stack.raw(f"POST {trap}/v1/messages HTTP/1.1\r\nHost: {trap_host}\r\n"
                       f"x-api-key: {CLIENT_CANARY}\r\nConnection: close\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert answer.startswith(b"HTTP/1.1 200")
    assert stack.trap.requests == []
    seen = stack.fake.messages_requests[before:]
    assert len(seen) == 5
    for rec in seen:
        assert rec.headers["host"] == stack.fake.url.split("//")[1]
        # The pooled upstream key went upstream; the client's key never did.
        assert rec.headers["x-api-key"] in POOL
        assert "authorization" not in rec.headers
        assert CLIENT_CANARY.encode() not in rec.body + str(rec.headers).encode()


def test_upstream_redirect_is_relayed_not_followed(stack: Stack) -> None:
    stack.fake.reply(Reply(status=307, body=b"", headers={
        "location": stack.trap.url + "/v1/messages"}))
    status, headers, _ = stack.post(orjson.dumps(MSG))
    assert status == 307 and headers["location"] == stack.trap.url + "/v1/messages"
    assert stack.trap.requests == []


BAD_KEYS = ["' OR '1'='1", "'; DROP TABLE midway_keys; --", '{"$ne": null}', '"}]}',
            "{{7*7}}", "${jndi:ldap://127.0.0.1/x}", "%s%n%x", "__import__('os')",
            "k" * 10_000, "Bearer", "", " ", "mw-" + "a" * 64, CLIENT_CANARY[:-1],
            CLIENT_CANARY + "x", UPSTREAM_CANARY, ADMIN_CANARY]


def test_bad_credentials_all_get_the_same_401(stack: Stack) -> None:
    before = len(stack.fake.requests)
    answers = set()
    for key in BAD_KEYS:
        for header in ("x-api-key", "authorization"):
            value = f"Bearer {key}" if header == "authorization" else key
            status, headers, body = stack.post(orjson.dumps(MSG), {header: value})
            error = error_of(body)
            answers.add((status, error["type"], error["message"]))
            assert "x-should-retry" not in headers
    assert answers == {(401, "authentication_error", "invalid x-api-key")}
    for raw_key in (b"mw-\x00nul", b"\xff\xfe\xfd", b"mw-\xc3\x28", b"\x1b[31m"):
        answer = stack.raw(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " + raw_key +
                           b"\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
        # The HTTP parser refuses bytes that cannot be in a header (a plain 400), or the key
        # check refuses them like any other wrong key.
        assert answer.split(b"\r\n")[0] in (b"HTTP/1.1 401 Unauthorized",
                                             b"HTTP/1.0 400 Bad Request"), answer[:200]
    assert len(stack.fake.requests) == before


def test_malformed_bodies_are_client_errors_or_relayed_never_500(stack: Stack) -> None:
    bodies = [b"", b"{", b'{"model": ', b"null", b"[]", b'"string"', b"12", b"\xff\xfe\x00",
              b'{"model": 5, "messages": "x", "max_tokens": "many", "stream": "yes"}',
              b'{"model": null, "messages": [null, 1, "x", {"role": 7}], "tools": {}}',
              b'{"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": '
              b'[{"type": "image", "source": {"type": "base64", "data": 5}}]}], '
              b'"max_tokens": -1, "thinking": "yes", "metadata": []}',
              b"[" * 5000 + b"]" * 5000, b'{"a":' * 2000 + b"1" + b"}" * 2000,
              b'{"model": "claude-sonnet-4-6", "max_tokens": 1000000000000000000000000000000, '
              b'"stream": true, "messages": [{"role": "user", "content": "big"}]}']
    for body in bodies:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            status, _, answer = stack.post(body, path=path)
            assert status != 500 and status < 600, (body[:60], status, answer[:300])
            if status >= 400:
                assert orjson.loads(answer)["type"] == "error"
    assert stack.server.proc is not None and stack.server.proc.poll() is None


def test_oversized_and_compressed_bodies_get_413_without_upstream_contact(stack: Stack) -> None:
    before = len(stack.fake.requests)
    big = b'{"model":"claude-sonnet-4-6","max_tokens":1,"messages":[{"role":"user","content":"' \
          + b"x" * (70 * 1024 * 1024) + b'"}]}'
    status, _, body = stack.post(big)
    assert status == 413 and error_of(body)["type"] == "request_too_large"
    bomb = gzip.compress(b"{" + b" " * (100 * 1024 * 1024) + b"}")  # 100 KB on the wire
    status, _, body = stack.post(bomb, {"x-api-key": CLIENT_CANARY, "content-encoding": "gzip"})
    assert status == 413 and error_of(body)["type"] == "request_too_large"
    for encoding in ("gzip", "deflate", "br", "zstd"):  # a body that does not decode as said
        status, _, body = stack.post(b"\x78\x9c not compressed at all",
                                     {"x-api-key": CLIENT_CANARY, "content-encoding": encoding})
        assert status in (400, 415) and error_of(body)["type"] == "invalid_request_error", \
            (encoding, status, body[:200])
    assert len(stack.fake.requests) == before
    assert stack.server.health()["status"] == "ok"


def test_many_headers_pass_and_header_injection_is_refused(stack: Stack) -> None:
    before = len(stack.fake.messages_requests)
    many = b"".join(b"x-h%d: v%d\r\n" % (i, i) for i in range(200))
    body = orjson.dumps(MSG)
    answer = stack.raw(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " +
                       CLIENT_CANARY.encode() + b"\r\n" + many + b"Connection: close\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 200")
    assert stack.fake.messages_requests[-1].headers["x-h199"] == "v199"
    for evil in (b"x-evil: a\rb", b"x-evil: a\nInjected: yes", b"x-evil: a\r\n b"):
        answer = stack.raw(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " +
                           CLIENT_CANARY.encode() + b"\r\n" + evil + b"\r\nConnection: close"
                           b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" +
                           body)
        assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 200")
    for rec in stack.fake.messages_requests[before:]:
        assert "injected" not in rec.headers
        assert all("\r" not in v and "\n" not in v for v in rec.headers.values())


def test_template_and_code_text_reach_upstream_byte_for_byte(stack: Stack) -> None:
    body = (b'{ "model":"claude-sonnet-4-6" ,"max_tokens":7,"messages":[{"role":"user",'
            b'"content":"{{7*7}} ${7*7} ${env:HOME} #{7*7} <%= 7*7 %> __import__(\\"os\\")'
            b'.system(\\"id\\") %s%n \\u0000 {{config.items()}} \'; DROP TABLE x; --"}]}')
    client = anthropic.Anthropic(base_url=stack.url, api_key=CLIENT_CANARY, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=7,
        messages=[{"role": "user", "content": "{{7*7}} ${7*7} __import__('os')"}])
    assert raw.http_response.status_code == 200
    sent = stack.fake.messages_requests[-1].json
    assert sent["messages"][0]["content"] == "{{7*7}} ${7*7} __import__('os')"
    status, _, _ = stack.post(body)
    assert status == 200
    assert stack.fake.messages_requests[-1].body == body


def test_admin_and_dashboard_routes_need_the_admin_key(stack: Stack) -> None:
    routes = [("GET", "/_midway/"), ("GET", "/_midway/requests"), ("GET", "/_midway/spend"),
              ("GET", "/_midway/api/status"), ("GET", "/_midway/api/requests"),
              ("GET", "/_midway/api/spend"), ("GET", "/_midway/api/upstreams"),
              ("GET", "/_midway/admin/keys"), ("POST", "/_midway/admin/keys"),
              ("DELETE", "/_midway/admin/keys/key_x")]
    wrong = [{}, {"x-api-key": CLIENT_CANARY}, {"authorization": f"Bearer {CLIENT_CANARY}"},
             {"x-api-key": stack.store_secret}, {"x-api-key": ADMIN_CANARY[:-1]},
             {"authorization": f"Bearer {ADMIN_CANARY}x"}, {"cookie": "midway_dashboard=1.x"},
             {"x-api-key": ADMIN_CANARY, "host": "evil.example"}]  # the key wins, Host or not
    for method, path in routes:
        for headers in wrong[:-1]:
            status, _, body = stack.request(method, path, b"{}" if method == "POST" else None,
                                            headers)
            assert status in (401, 404), (method, path, headers, status)
            assert ADMIN_CANARY.encode() not in body
        status, _, _ = stack.request(method, path, b'{"name": "x"}' if method == "POST"
                                     else None, wrong[-1])
        assert status not in (401, 404) or path.endswith("key_x"), (method, path, status)
    # Unknown paths under the prefix and elsewhere: the same 404.
    for path in ("/_midway/../../etc/passwd", "/_midway/admin", "/admin", "/.env"):
        status, _, body = stack.request("GET", path)
        assert status in (401, 404)


def test_odd_host_headers_change_nothing(stack: Stack) -> None:
    expected_host = stack.fake.url.split("//")[1]
    body = orjson.dumps(MSG)
    before = len(stack.fake.messages_requests)
    for n, host in enumerate((b"evil.example", b"127.0.0.1:1", b"[::1]:99", b"localhost",
                              b"a" * 4000, b"api.anthropic.com", b"evil.example:443@127.0.0.1",
                              b"")):
        body = orjson.dumps({**MSG, "max_tokens": 100 + n})  # distinct: no cache hits
        answer = stack.raw(b"POST /v1/messages HTTP/1.1\r\nHost: " + host + b"\r\nx-api-key: " +
                           CLIENT_CANARY.encode() + b"\r\nConnection: close\r\nContent-Length: "
                           + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert answer.startswith(b"HTTP/1.1 200"), (host[:40], answer[:200])
    # HTTP/1.0 without any Host.
    body = orjson.dumps({**MSG, "max_tokens": 99})
    answer = stack.raw(b"POST /v1/messages HTTP/1.0\r\nx-api-key: " + CLIENT_CANARY.encode() +
                       b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert answer.split(b"\r\n")[0].endswith(b"200 OK")
    seen = stack.fake.messages_requests[before:]
    assert len(seen) == 9
    assert {r.headers["host"] for r in seen} == {expected_host}
    assert stack.trap.requests == []
    # A rebinding page (loopback client, foreign Host) sees no dashboard without the key.
    for name in ("evil.example", "127.0.0.1.evil.example"):
        status, _, _ = stack.request("GET", "/_midway/api/status", headers={"host": name})
        assert status in (401, 404)


def test_canaries_are_found_nowhere(stack: Stack) -> None:
    """Traffic through every path, then a search of every byte midway answered or wrote."""
    fake, post = stack.fake, stack.post
    client = anthropic.Anthropic(base_url=stack.url, api_key=CLIENT_CANARY, max_retries=0)
    store_client = anthropic.Anthropic(base_url=stack.url, api_key=stack.store_secret,
                                       max_retries=0)
    prompt = {"model": "claude-sonnet-4-6", "max_tokens": 16,
              "messages": [{"role": "user", "content": "canary run: cache me"}]}
    for c in (client, store_client):
        c.messages.create(**prompt)  # the second one is a cache hit
        with c.messages.stream(**prompt) as s:
            s.get_final_message()
    fake.reply(Reply(status=429, headers={"retry-after": "1"}))  # a key rests; the other serves
    stack.seen.append(client.messages.with_raw_response.create(**{
        **prompt, "max_tokens": 17}).http_response.read())
    fake.reply(Reply(reset_after=3))  # mid-stream reset
    post(orjson.dumps({**prompt, "stream": True, "max_tokens": 18}))
    fake.reply(Reply(status=400, error_type="invalid_request_error",
                     error_message="prompt is too long"))
    post(orjson.dumps({**prompt, "max_tokens": 19}))
    post(orjson.dumps(prompt), path="/v1/messages/count_tokens")
    stack.request("GET", "/v1/models", headers={"authorization": f"Bearer {CLIENT_CANARY}"})
    post(orjson.dumps(prompt), {"x-api-key": UPSTREAM_CANARY})  # a leaked upstream key: 401
    for canary in (CLIENT_CANARY, UPSTREAM_CANARY, ADMIN_CANARY):
        # One stray byte after a real key (a key file saved with CRLF): the HTTP parser refuses
        # the line, and neither its answer nor the log may quote it.
        for line in (b"x-api-key: %s\x00", b"authorization: Bearer %s\r x", b"x-api-key: %s\x1b"):
            answer = stack.raw(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n" +
                               line % canary.encode() + b"\r\nConnection: close\r\n"
                               b"Content-Length: 2\r\n\r\n{}")
            assert answer.startswith(b"HTTP/1.0 400")
            assert error_of(answer.partition(b"\r\n\r\n")[2])["type"] == \
                "invalid_request_error"
    admin = {"authorization": f"Bearer {ADMIN_CANARY}"}
    for path in ("/_midway/api/status", "/_midway/api/requests", "/_midway/api/spend",
                 "/_midway/api/upstreams", "/_midway/api/cache", "/_midway/api/traffic",
                 "/_midway/admin/keys", "/_midway/router/status", "/_midway/audit/status",
                 "/healthz", "/metrics"):
        status, _, _ = stack.request("GET", path, headers=admin)
        assert status == 200, path
    status, _, records = stack.request("GET", "/_midway/api/requests", headers=admin)
    for record in orjson.loads(records).get("requests", [])[:20]:
        stack.request("GET", f"/_midway/api/requests/{record['id']}", headers=admin)
    # Every request reached the upstream with a pooled key, never a client's.
    for rec in fake.requests:
        assert rec.headers.get("x-api-key") in POOL
        assert "authorization" not in rec.headers
    server = stack.server
    wait_for(lambda: server.health()["open_streams"] == 0)
    outputs = [server.cli(*cmd) for cmd in (
        ("audit", "query", "--json", "--limit", "10000"), ("audit", "export", "--format", "jsonl"),
        ("billing", "report", "--json"), ("billing", "report", "--by", "principal", "--json"),
        ("router", "status", "--json"), ("keys", "list", "--all", "--json"),
        ("config", "show"))]
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    shown = orjson.loads(outputs[0].stdout)
    assert len(shown) >= 10
    assert server.stop(signal.SIGTERM) == 0  # graceful: audit and billing queues flushed
    everything = [b"".join(stack.seen), *(o.stdout.encode() + o.stderr.encode()
                                          for o in outputs)]
    files = [p for p in Path(server.tmp).rglob("*") if p.is_file()]
    assert any(p.name == "audit.jsonl" for p in files)
    assert any(p.name == "billing.db" for p in files)
    everything += [p.read_bytes() for p in files if not p.name.endswith(".toml")]
    blob = b"\n".join(everything)
    assert len(blob) > 100_000
    for canary in (CLIENT_CANARY, UPSTREAM_CANARY, UPSTREAM_CANARY_2, ADMIN_CANARY,
                   stack.store_secret):
        assert canary.encode() not in blob, canary
        # also not cut in half at a 12-character prefix boundary of something longer
        assert canary[-16:].encode() not in blob, canary
