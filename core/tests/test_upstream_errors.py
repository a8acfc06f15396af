"""An upstream midway cannot reach: the client's error body and the log name the URL (never
its credentials) and the cause — connection refused, DNS, TLS, timeout — with both upstream
clients."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import aiohttp
import orjson
import pytest

from midway.testing import free_port
from midway.upstream_client import UpstreamUnreachable
from midway.upstream_errors import connect_cause, public_url

MSG = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}]})


def post(url: str) -> tuple[int, dict[str, str]]:
    async def go() -> tuple[int, dict[str, str]]:
        async with aiohttp.ClientSession() as session, session.post(
                url + "/v1/messages", data=MSG, headers={"x-api-key": "sk-ant-k1"}) as resp:
            return resp.status, orjson.loads(await resp.read())["error"]
    return asyncio.run(go())


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
def test_connection_refused_names_url_and_cause(midway_factory, caplog, client):
    port = free_port()
    proxy = midway_factory(upstream=f"http://127.0.0.1:{port}", upstream_client=client)
    with caplog.at_level(logging.WARNING, logger="midway.proxy"):
        status, error = post(proxy.url)
    assert status == 502 and error["type"] == "api_error"
    expected = f"upstream default at http://127.0.0.1:{port} is unreachable: connection refused"
    assert error["message"] == expected
    assert expected in caplog.text


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
def test_tls_error_names_url_and_cause(fake_upstream, midway_factory, client):
    # https:// to a server speaking plain HTTP: the TLS handshake fails.
    origin = fake_upstream.url.replace("http://", "https://")
    proxy = midway_factory(upstream=origin, upstream_client=client)
    status, error = post(proxy.url)
    assert status == 502
    assert error["message"].startswith(f"upstream default at {origin} is unreachable: "
                                       "TLS error (")


def test_dns_failure_names_the_host(midway_factory):
    proxy = midway_factory(upstream="http://midway-no-such-host.invalid")
    status, error = post(proxy.url)
    assert status == 502
    assert error["message"].startswith("upstream default at http://midway-no-such-host.invalid "
                                       "is unreachable: DNS lookup failed (")


def test_credentials_in_the_url_are_never_shown(midway_factory, caplog):
    port = free_port()
    proxy = midway_factory(upstream=f"http://user:s3cr3t-pw@127.0.0.1:{port}/base?key=sk-q")
    with caplog.at_level(logging.WARNING, logger="midway.proxy"):
        status, error = post(proxy.url)
    assert status == 502
    assert f"http://127.0.0.1:{port}/base is unreachable: connection refused" in \
        error["message"]
    for secret in ("s3cr3t-pw", "user", "sk-q"):
        assert secret not in error["message"] and secret not in caplog.text


def test_causes_in_words():
    assert connect_cause(UpstreamUnreachable("x", TimeoutError())) == "connect timed out"
    assert connect_cause(UpstreamUnreachable("x", ConnectionRefusedError(111, "refused"))) \
        == "connection refused"
    assert connect_cause(UpstreamUnreachable("x", socket.gaierror(-2, "Name or service not "
                                                                  "known"))) \
        == "DNS lookup failed (Name or service not known)"
    tls = ssl.SSLCertVerificationError(1, "certificate verify failed")
    tls.verify_message = "self-signed certificate"
    assert connect_cause(UpstreamUnreachable("x", tls)) == "TLS error (self-signed certificate)"
    assert public_url("https://u:p@h.example:8443/v1?x=1#f") == "https://h.example:8443/v1"
