"""Attacks on revocation through a real ``midway serve`` and the real CLI, on SQLite and on
PostgreSQL (#17 items 1 and 10).

Item 1: a key holding ``keys:create`` mints children (which mint grandchildren) as fast as it
can while ``midway keys revoke`` runs; once the revoke has returned, no key of that family may
authenticate, whatever raced it. Item 10: revokes run beside a stream of other key writes on
PostgreSQL; every revoke must succeed (retried through deadlocks and serialization failures)
and leave its key refused.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from hardening_support import ADMIN_CANARY, MSG, Server

from midway.testing import FakeUpstream, wait_for

CONFIG = """
[midway]
admin_key = "env:HARDEN_ADMIN_KEY"
plugins = []

[keys]
enabled = true
poll_interval = 0.05
{store}
"""
ROUNDS = 5
MINTERS = 4


def _call(url: str, method: str, key: str, body: Any = None,
          headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, method=method, data=None if body is None else orjson.dumps(body),
        headers={"x-api-key": key, "content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return exc.code, raw.decode(errors="replace")


def admin(server: Server, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return _call(f"{server.url}/_midway/admin{path}", method, ADMIN_CANARY, body)


def derive(server: Server, secret: str, name: str) -> tuple[int, Any]:
    return _call(f"{server.url}/_midway/keys", "POST", secret,
                 {"name": name, "capabilities": ["keys:create"]})


def authenticates(server: Server, secret: str) -> bool:
    status, answer = _call(f"{server.url}/v1/messages", "POST", secret, MSG)
    assert status in (200, 401), (status, answer)
    return status == 200


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path,
           fake_upstream: FakeUpstream) -> Iterator[Server]:
    store = ""
    if request.param == "postgresql":
        dsn = request.getfixturevalue("postgres_dsn")
        schema = request.getfixturevalue("pg_schema")
        store = f'store = "{dsn}"\nschema = "{schema}"'
    running = Server(tmp_path, CONFIG.format(store=store), fake_upstream.url)
    try:
        yield running.start()
    finally:
        running.ensure_stopped()


def _mint_until_refused(server: Server, root: str, minted: list[str],
                        started: threading.Event) -> None:
    """Derive a child, and a grandchild from it, until the root is refused."""
    n = 0
    while True:
        n += 1
        status, child = derive(server, root, f"child-{n}")
        started.set()
        if status != 201:
            return
        minted.append(child["secret"])
        status, grandchild = derive(server, child["secret"], f"grandchild-{n}")
        if status == 201:
            minted.append(grandchild["secret"])


@pytest.mark.attack(1, "revoked keys leave working children minted while revoke runs")
def test_revoke_leaves_no_working_descendant(server: Server) -> None:
    for round_ in range(ROUNDS):
        status, root = admin(server, "POST", "/keys", {"name": f"root-{round_}",
                                                        "capabilities": ["keys:create"]})
        assert status == 201, root
        minted: list[str] = []
        started = threading.Event()
        with ThreadPoolExecutor(MINTERS) as pool:
            minters = [pool.submit(_mint_until_refused, server, root["secret"], minted, started)
                       for _ in range(MINTERS)]
            assert started.wait(30)
            revoked = server.cli("keys", "revoke", root["id"])
            assert revoked.returncode == 0, revoked.stderr
            # The server learns of the CLI's write at its next poll (every 0.05 s here).
            wait_for(lambda: not authenticates(server, root["secret"]), timeout=10)
            for minter in minters:
                minter.result(timeout=60)
        assert minted, "no key was derived before the revoke: the race was not run"
        surviving = [s for s in minted if authenticates(server, s)]
        assert surviving == [], f"round {round_}: {len(surviving)} of {len(minted)} " \
            "descendants still authenticate after the revoke"
        status, listing = admin(server, "GET", "/keys")
        assert status == 200
        active = [k["id"] for k in listing["data"] if k["status"] == "active"]
        assert active == [], f"round {round_}: descendants left active in the store: {active}"


@pytest.mark.attack(10, "keys revoke deadlocks against concurrent key writes")
@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_revoke_succeeds_beside_concurrent_key_writes(server: Server) -> None:
    families = []
    for i in range(5):
        status, root = admin(server, "POST", "/keys", {"name": f"family-{i}",
                                                        "capabilities": ["keys:create"]})
        assert status == 201, root
        families.append(root)
    stop = threading.Event()

    def churn(root: dict[str, Any]) -> None:
        """Derive, rename and rotate keys of a family until told to stop."""
        n = 0
        while not stop.is_set():
            n += 1
            status, child = derive(server, root["secret"], f"c{n}")
            if status != 201:
                return
            admin(server, "PATCH", f"/keys/{child['id']}", {"name": f"c{n}-renamed"})
            admin(server, "POST", f"/keys/{child['id']}/rotate", {})
            admin(server, "PATCH", f"/keys/{root['id']}", {"labels": {"n": str(n)}})

    def revoke(root: dict[str, Any]) -> Callable[[], Any]:
        return lambda: server.cli("keys", "revoke", root["id"])

    with ThreadPoolExecutor(2 * len(families)) as pool:
        churners = [pool.submit(churn, root) for root in families]
        results = [pool.submit(revoke(root)) for root in families]
        outcomes = [r.result(timeout=120) for r in results]
        stop.set()
        for churner in churners:
            churner.result(timeout=60)
    failed = [(o.returncode, o.stderr[-500:]) for o in outcomes if o.returncode != 0]
    assert failed == [], failed
    for root in families:
        wait_for(lambda root=root: not authenticates(server, root["secret"]), timeout=10)
    status, listing = admin(server, "GET", "/keys")
    assert status == 200
    assert [k["id"] for k in listing["data"] if k["status"] == "active"] == []
