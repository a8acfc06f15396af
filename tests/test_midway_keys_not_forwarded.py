"""A midway client key (``mw-…``) is never forwarded upstream by a gateway where client keys
are not enabled (#19 item 4): a real ``midway serve`` in pass-through mode refuses it with a
401 saying why, whichever header carries it, and the fake upstream receives nothing."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hardening_support import Server

from midway.keys.tokens import new_secret
from midway.testing import FakeUpstream

CONFIG = """
[midway]
plugins = []
"""
MSG = {"model": "claude-sonnet-4-6", "max_tokens": 16,
       "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def server(tmp_path: Path, fake_upstream: FakeUpstream) -> Iterator[Server]:
    running = Server(tmp_path, CONFIG, fake_upstream.url)
    try:
        yield running.start()
    finally:
        running.ensure_stopped()


def post(server: Server, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(server.url + "/v1/messages", data=orjson.dumps(MSG),
                                     headers={"content-type": "application/json",
                                              "anthropic-version": "2023-06-01", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


KEY = new_secret()[1]


@pytest.mark.parametrize("headers", [
    {"x-api-key": KEY},
    {"authorization": f"Bearer {KEY}"},
    {"x-api-key": "sk-ant-api03-real", "authorization": f"Bearer {KEY}"},  # either header
    {"x-api-key": "mw-truncated"},  # a malformed midway key is one all the same
], ids=["x-api-key", "bearer", "beside-an-anthropic-key", "malformed"])
def test_a_midway_key_is_refused_not_forwarded(server: Server, fake_upstream: FakeUpstream,
                                               headers: dict[str, str]) -> None:
    status, body = post(server, headers)
    assert status == 401
    assert body["type"] == "error"
    error = body["error"]
    assert isinstance(error, dict) and error["type"] == "authentication_error"
    assert "client keys are not enabled on this gateway" in error["message"]
    assert "[keys] enabled = true" in error["message"]
    assert KEY not in str(body) and "mw-truncated" not in str(body)
    assert fake_upstream.requests == []
    assert KEY not in server.log.read_text()


def test_an_anthropic_key_still_passes_through(server: Server,
                                               fake_upstream: FakeUpstream) -> None:
    status, _ = post(server, {"authorization": "Bearer sk-ant-oat01-personal"})
    assert status == 200
    (forwarded,) = fake_upstream.messages_requests
    assert forwarded.headers["authorization"] == "Bearer sk-ant-oat01-personal"
