"""Attack on the key store through a real ``midway serve`` (#17 item 9): a key created with a
huge expiry (or a rotation with a huge grace) must be refused on input, by the admin API and
by the CLI, and one bad row already in the store must never break a listing."""

from __future__ import annotations

import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hardening_support import ADMIN_CANARY, Server

from midway.testing import FakeUpstream

CONFIG = """
[midway]
admin_key = "env:HARDEN_ADMIN_KEY"
plugins = []

[keys]
enabled = true
poll_interval = 0.1
"""


@pytest.fixture
def server(tmp_path: Path, fake_upstream: FakeUpstream) -> Iterator[Server]:
    running = Server(tmp_path, CONFIG, fake_upstream.url)
    try:
        yield running.start()
    finally:  # a server that never got healthy is stopped too
        running.ensure_stopped()


def admin(server: Server, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{server.url}/_midway/admin{path}", method=method,
        data=None if body is None else orjson.dumps(body),
        headers={"x-api-key": ADMIN_CANARY, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, orjson.loads(raw)
        except orjson.JSONDecodeError:  # a plain-text 500 is an answer too
            return exc.code, raw.decode(errors="replace")


HUGE = [{"expires_in": "999999999999d"}, {"expires_in": "9" * 400},
        {"expires_at": "9999-12-31T23:59:59-12:00"}, {"expires_at": "0001-01-01T00:00:00"}]


@pytest.mark.attack(9, "a key with a huge expiry breaks key listing")
def test_huge_expiry_refused_and_listing_survives_a_bad_row(server: Server) -> None:
    for spec in HUGE:
        status, answer = admin(server, "POST", "/keys", {"name": "huge", **spec})
        assert status == 400, (spec, status, answer)
    status, created = admin(server, "POST", "/keys", {"name": "fine", "expires_in": "30d"})
    assert status == 201
    status, _ = admin(server, "POST", f"/keys/{created['id']}/rotate", {"grace": 1e300})
    assert status == 400
    status, listing = admin(server, "GET", "/keys")
    assert status == 200 and [k["name"] for k in listing["data"]] == ["fine"]

    cli = server.cli("keys", "create", "--name", "huge-cli", "--expires", "999999999999d")
    assert cli.returncode != 0 and "Traceback" not in cli.stderr, cli.stderr
    assert "9999" in cli.stderr

    # A row written before validation existed (or by hand): the listing shows it as invalid.
    with sqlite3.connect(server.data_dir / "keys.db") as con:
        con.execute("UPDATE midway_keys SET expires_at = 1e300 WHERE id = ?", (created["id"],))
    status, listing = admin(server, "GET", "/keys")
    assert status == 200, listing
    assert [(k["id"], k["status"]) for k in listing["data"]] == [(created["id"], "invalid")]
    status, one = admin(server, "GET", f"/keys/{created['id']}")
    assert status == 200 and one["status"] == "invalid"
    listed = server.cli("keys", "list", "--all")
    assert listed.returncode == 0, listed.stderr
    assert created["id"] in listed.stdout and "invalid" in listed.stdout
    listed = server.cli("keys", "list", "--all", "--json")
    assert listed.returncode == 0 and orjson.loads(listed.stdout)[0]["status"] == "invalid"
