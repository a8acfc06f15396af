"""Attacks on what a midway install keeps on disk and how it names clients, through real
``midway serve`` processes: other local users reading the data dir (#17 item 11), and two
pass-through credentials sharing a tenant because the tenant was an unkeyed 48-bit hash
(item 12)."""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import stat
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hardening_support import MSG, Server, audit_ids

from midway.testing import FakeUpstream, wait_for

CONFIG = """
[midway]
plugins = ["audit", "billing", "cache"]

[cache]
rules = [{ model = "*" }]  # the cache is opt-in: cache every request here

[keys]
enabled = false
"""

# Two credentials whose unkeyed fingerprints (sha256(credential)[:12], 48 bits) are equal:
# found offline by cycle-finding (Floyd, 31 million steps: about a minute of one core).
COLLIDING = ("sk-ant-api03-894ce9633b21", "sk-ant-api03-004d57424af1")


@pytest.fixture
def wide_umask() -> Iterator[None]:
    """midway is started the way a user's shell would: umask 022 (files 0644, dirs 0755)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def ask(server: Server, credential: str, body: dict[str, object] = MSG) -> tuple[str, str]:
    request = urllib.request.Request(server.url + "/v1/messages", data=orjson.dumps(body),
                                     headers={"x-api-key": credential,
                                              "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()
        return resp.headers["x-midway-request-id"], resp.headers.get("x-midway-cache", "")


def modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


@pytest.mark.attack(11, "the data dir and its stores are readable by other local users")
def test_data_dir_is_private(tmp_path: Path, fake_upstream: FakeUpstream, wide_umask: None) -> None:
    server = Server(tmp_path, CONFIG, fake_upstream.url)
    try:
        server.start()
        request_id, _ = ask(server, "sk-ant-private")
        wait_for(lambda: request_id in audit_ids(server.data_dir), timeout=20)
        running = modes(server.data_dir)  # -wal, -shm and lock files exist while it runs
        created = server.cli("keys", "create", "--name", "cli-made")  # a CLI-made store too
        assert created.returncode == 0, created.stderr
    finally:
        server.stop()
    found = {**running, **modes(server.data_dir)}
    assert "keys.db" in found and "audit.db" in found and "billing.db" in found
    assert any(name.endswith("-wal") for name in found)
    open_to_others = {name: oct(mode) for name, mode in found.items() if mode & 0o077}
    assert not open_to_others


@pytest.mark.attack(11, "the data dir and its stores are readable by other local users")
def test_wide_existing_data_dir_is_reported(tmp_path: Path, fake_upstream: FakeUpstream,
                                            wide_umask: None) -> None:
    server = Server(tmp_path, CONFIG, fake_upstream.url)
    server.data_dir.mkdir(mode=0o755)
    server.data_dir.chmod(0o755)
    try:
        server.start()
        ask(server, "sk-ant-wide")
    finally:
        server.stop()
    warnings = [line for line in server.log.read_text().splitlines()
                if "open to other users" in line]
    assert len(warnings) == 1 and str(server.data_dir) in warnings[0]


@pytest.mark.attack(12, "two pass-through credentials share a cache tenant (48-bit unkeyed "
                        "hash)")
def test_colliding_credentials_do_not_share_a_tenant(tmp_path: Path, fake_upstream: FakeUpstream
                                                     ) -> None:
    first, second = COLLIDING
    old = hashlib.sha256
    assert old(first.encode()).hexdigest()[:12] == old(second.encode()).hexdigest()[:12]
    server = Server(tmp_path, CONFIG, fake_upstream.url)
    try:
        server.start()
        id_a, cache_a = ask(server, first)
        wait_for(lambda: id_a in audit_ids(server.data_dir), timeout=20)
        id_b, cache_b = ask(server, second)
        wait_for(lambda: id_b in audit_ids(server.data_dir), timeout=20)
        shown = server.cli("principal", first)
    finally:
        server.stop()
    assert (cache_a, cache_b) == ("miss", "miss")  # the second one's answer is its own
    assert len(fake_upstream.messages_requests) == 2
    # The tenant is a keyed hash of 128 bits under the install's secret (0600, data dir):
    # nobody without that secret can compute it from a credential.
    secret_file = server.data_dir / "identity.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = bytes.fromhex(secret_file.read_text().strip())
    expected = "key-" + hmac.new(secret, first.encode(), hashlib.sha256).hexdigest()[:32]
    with sqlite3.connect(server.data_dir / "audit.db") as con:
        principals = {r[0]: r[1] for r in con.execute(
            "SELECT request_id, principal FROM audit_records")}
    assert principals[id_a] == expected != principals[id_b]
    assert shown.returncode == 0 and shown.stdout.strip() == expected
