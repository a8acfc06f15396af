"""Secure by default: loopback only, fixed upstream, same 401 for every bad key, no leaks."""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
import orjson
import pytest
from click.testing import CliRunner

from midway.cli import cli
from midway.config import ConfigError, Settings
from midway.server import check_exposure
from midway.testing import Reply, wait_for

MSG = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}]})
CLIENT_CANARY = "mw-canary-client-7f3a9c1e55"
UPSTREAM_CANARY = "sk-ant-canary-upstream-2b8d41"


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"content-length" in b"".join(chunks).lower():
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                if len(body) >= length:
                    break
        return b"".join(chunks)


def test_public_bind_refused_without_client_keys():
    with pytest.raises(ConfigError, match="refusing to listen"):
        check_exposure(Settings(host="0.0.0.0"))
    check_exposure(Settings(host="127.0.0.1"))
    check_exposure(Settings(host="::1"))
    check_exposure(Settings(host="0.0.0.0", allow_public=True))
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code != 0 and "refusing to listen" in result.output


def test_client_cannot_choose_the_upstream_host(fake_upstream, midway_proxy):
    port = int(midway_proxy.url.rsplit(":", 1)[1])
    answer = raw_request(port, b"POST http://evil.example/v1/messages HTTP/1.1\r\n"
                               b"Host: 127.0.0.1\r\nx-api-key: k\r\n"
                               b"X-Forwarded-Host: evil.example\r\nConnection: close\r\n"
                               b"Content-Length: " + str(len(MSG)).encode() + b"\r\n\r\n" + MSG)
    assert answer.startswith(b"HTTP/1.1 200")
    seen = fake_upstream.messages_requests[-1]
    assert seen.headers["host"] == fake_upstream.url.split("//")[1]


def test_upstream_redirects_are_not_followed(fake_upstream, midway_proxy):
    fake_upstream.reply(Reply(status=307, body=b"", headers={
        "location": "http://127.0.0.1:9/steal"}))

    async def go() -> tuple[int, str]:
        async with aiohttp.ClientSession() as s, s.post(
                midway_proxy.url + "/v1/messages", data=MSG, headers={"x-api-key": "k"},
                allow_redirects=False) as r:
            return r.status, r.headers.get("location", "")
    assert asyncio.run(go()) == (307, "http://127.0.0.1:9/steal")
    assert len(fake_upstream.requests) == 1


BAD_KEYS = ["' OR '1'='1", '{"$ne": null}', "{{7*7}}", "${jndi:ldap://x}", "k" * 10_000,
            "mw-\x00nul", "Bearer", "", " ", "mw-" + "a" * 64, CLIENT_CANARY[:-1]]


def test_every_bad_key_gets_the_same_401(fake_upstream, midway_factory, monkeypatch):
    monkeypatch.setenv("MW_TEST_UPSTREAM", UPSTREAM_CANARY)
    proxy = midway_factory(client_keys=[{"key": CLIENT_CANARY, "name": "alice", "team": "t"}],
                           upstream_api_key="env:MW_TEST_UPSTREAM")

    async def go(key: str) -> tuple[int, dict[str, object]]:
        async with aiohttp.ClientSession() as s, s.post(
                proxy.url + "/v1/messages", data=MSG, headers={"x-api-key": key}) as r:
            body = orjson.loads(await r.read())
            body.pop("request_id", None)
            return r.status, body
    answers = [asyncio.run(go(k)) for k in BAD_KEYS if "\x00" not in k]
    assert all(a == answers[0] for a in answers)
    assert answers[0][0] == 401
    assert answers[0][1]["error"]["type"] == "authentication_error"
    port = int(proxy.url.rsplit(":", 1)[1])
    for value in (b"mw-\x00nul", b"\xff\xfe\xfd", b"mw-\xc3\x28"):
        answer = raw_request(port, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: " +
                             value + b"\r\nConnection: close\r\nContent-Length: " +
                             str(len(MSG)).encode() + b"\r\n\r\n" + MSG)
        # The HTTP parser itself refuses bytes that are not a header value (a plain 400).
        assert answer.split(b"\r\n")[0] in (b"HTTP/1.1 401 Unauthorized",
                                             b"HTTP/1.0 400 Bad Request")
    assert fake_upstream.requests == []


def test_canaries_appear_in_no_log_error_or_metric(fake_upstream, midway_factory, monkeypatch,
                                                   caplog):
    monkeypatch.setenv("MW_TEST_UPSTREAM", UPSTREAM_CANARY)
    proxy = midway_factory(client_keys=[{"key": CLIENT_CANARY, "name": "alice", "team": "t"}],
                           upstream_api_key="env:MW_TEST_UPSTREAM", access_log=True,
                           log_format="json")
    caplog.set_level(logging.DEBUG)
    fake_upstream.reply(Reply(), Reply(status=401, error_type="authentication_error",
                                       error_message="invalid x-api-key"),
                        Reply(reset_after=2))

    async def go() -> list[bytes]:
        bodies = []
        async with aiohttp.ClientSession() as s:
            for key, body in ((CLIENT_CANARY, MSG), (CLIENT_CANARY, MSG),
                              (CLIENT_CANARY, MSG.replace(b'"max_tokens"',
                                                          b'"stream":true,"max_tokens"')),
                              (UPSTREAM_CANARY, MSG), (CLIENT_CANARY + "x", MSG)):
                async with s.post(proxy.url + "/v1/messages", data=body,
                                  headers={"authorization": f"Bearer {key}"}) as r:
                    bodies.append(await r.read() + str(dict(r.headers)).encode())
            async with s.get(proxy.url + "/metrics") as r:
                bodies.append(await r.read())
        return bodies
    outputs = asyncio.run(go())
    wait_for(lambda: sum(r.name == "midway.access" for r in caplog.records) >= 5)
    # The upstream got the configured key, never the client's.
    assert [r.headers.get("x-api-key") for r in fake_upstream.messages_requests] == [
        UPSTREAM_CANARY] * 3
    assert all("authorization" not in r.headers for r in fake_upstream.messages_requests)
    everything = b"".join(outputs) + caplog.text.encode()
    for canary in (CLIENT_CANARY, UPSTREAM_CANARY):
        assert canary.encode() not in everything
    result = CliRunner().invoke(cli, ["config", "show"])
    assert UPSTREAM_CANARY not in result.output


def test_access_log_escapes_control_characters(fake_upstream, midway_factory, caplog):
    proxy = midway_factory(access_log=True)
    caplog.set_level(logging.INFO, logger="midway.access")

    async def go() -> None:
        async with aiohttp.ClientSession() as s, s.post(
                proxy.url + "/v1/messages%0d%0aFAKE-LINE", data=MSG,
                headers={"x-api-key": "k"}) as r:
            await r.read()
    asyncio.run(go())
    wait_for(lambda: any(r.name == "midway.access" for r in caplog.records))
    line = next(r.getMessage() for r in caplog.records if r.name == "midway.access")
    assert "\n" not in line and "\r" not in line


def test_many_headers_and_bad_header_values_are_client_errors(fake_upstream, midway_proxy):
    port = int(midway_proxy.url.rsplit(":", 1)[1])
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(200))
    answer = raw_request(port, b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"x-api-key: k\r\n" + many + b"Connection: close\r\nContent-Length: " +
                         str(len(MSG)).encode() + b"\r\n\r\n" + MSG)
    assert answer.startswith(b"HTTP/1.1 200")
    assert fake_upstream.messages_requests[-1].headers["x-h199"] == "v"
    answer = raw_request(port, b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: k\r\n"
                               b"x-evil: a\rb\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.0 400")
    assert len(fake_upstream.messages_requests) == 1


def test_invalid_json_and_template_text_pass_through_literally(fake_upstream, midway_proxy):
    async def go(body: bytes) -> int:
        async with aiohttp.ClientSession() as s, s.post(
                midway_proxy.url + "/v1/messages", data=body, headers={"x-api-key": "k"}) as r:
            await r.read()
            return r.status
    assert asyncio.run(go(b'{"model": ')) == 400  # the upstream's own 400, relayed
    prompt = b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":' \
             b'"{{7*7}} ${env:HOME} __import__(\\"os\\") %s %n"}]}'
    assert asyncio.run(go(prompt)) == 200
    assert [r.body for r in fake_upstream.requests] == [b'{"model": ', prompt]


def test_upstream_cookies_are_never_replayed_for_other_clients(fake_upstream, midway_proxy):
    fake_upstream.reply(Reply(headers={"set-cookie": "session=alice-secret; Path=/"}), Reply())

    async def go(key: str) -> str:
        async with aiohttp.ClientSession() as s, s.post(
                midway_proxy.url + "/v1/messages", data=MSG, headers={"x-api-key": key}) as r:
            await r.read()
            return r.headers.get("set-cookie", "")
    assert "alice-secret" in asyncio.run(go("alice"))  # relayed to its own client
    asyncio.run(go("bob"))
    assert "cookie" not in fake_upstream.messages_requests[-1].headers


def test_path_and_query_bytes_are_forwarded_exactly(fake_upstream, midway_proxy):
    port = int(midway_proxy.url.rsplit(":", 1)[1])
    raw_request(port, b"GET /v1/models?limit=1000&after_id=a%2Fb%20c&x=%7E HTTP/1.1\r\n"
                      b"Host: 127.0.0.1\r\nx-api-key: k\r\nConnection: close\r\n\r\n")
    assert fake_upstream.requests[-1].query == "limit=1000&after_id=a%2Fb%20c&x=%7E"


def test_key_mode_upstream_without_credentials_gets_the_upstream_key(fake_upstream,
                                                                     midway_factory,
                                                                     monkeypatch):
    from midway import Upstream
    from midway.plugins import module_plugin

    monkeypatch.setenv("MW_TEST_UPSTREAM", UPSTREAM_CANARY)
    chooser = module_plugin("route", choose_upstream=lambda exchange: Upstream(
        url=fake_upstream.url, name="routed"))
    proxy = midway_factory(plugins=[chooser],
                           client_keys=[{"key": CLIENT_CANARY, "name": "alice"}],
                           upstream_api_key="env:MW_TEST_UPSTREAM")

    async def go() -> int:
        async with aiohttp.ClientSession() as s, s.post(
                proxy.url + "/v1/messages", data=MSG, headers={"x-api-key": CLIENT_CANARY}) as r:
            return r.status
    assert asyncio.run(go()) == 200
    seen = fake_upstream.messages_requests[-1].headers
    assert seen["x-api-key"] == UPSTREAM_CANARY
    assert CLIENT_CANARY not in str(dict(seen))
