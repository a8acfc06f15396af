"""Attacks on the dashboard's sessions through a real ``midway serve`` with two workers
(#17 item 18): a cookie copied before logout must stop working everywhere; guessing the admin
key (form or headers) must be slowed per client address; failed guesses must never lock the
right key out."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hardening_support import ADMIN_CANARY, Server

from midway.testing import FakeUpstream

COOKIE = "midway_dashboard"
SPACING = 0.25
MAX_WAIT = 1.0
CONFIG = f"""
[midway]
admin_key = "env:HARDEN_ADMIN_KEY"
plugins = ["dashboard"]

[dashboard]
free_attempts = 5
attempt_spacing = {SPACING}
attempt_max_wait = {MAX_WAIT}
"""


@pytest.fixture
def server(tmp_path: Path, fake_upstream: FakeUpstream) -> Iterator[Server]:
    running = Server(tmp_path, CONFIG, fake_upstream.url, extra_args=("--workers", "2"))
    try:
        yield running.start()
        assert running.stop() == 0  # SIGTERM: the workers end with the master
    finally:
        running.ensure_stopped()


def login(client: httpx.Client, key: str) -> httpx.Response:
    return client.post("/_midway/login", data={"key": key, "next": "/_midway/"})


@pytest.mark.attack(18, "a session cookie copied before logout still opens the dashboard")
def test_logout_ends_the_session_on_every_worker(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        assert login(client, ADMIN_CANARY).status_code == 303
        stolen = client.cookies[COOKIE]
        # Several connections: both workers honour the session while it lasts ...
        for _ in range(6):
            with httpx.Client(base_url=server.url, cookies={COOKIE: stolen}) as other:
                assert other.get("/_midway/api/status").status_code == 200
        assert client.post("/_midway/logout").status_code == 303
    # ... and neither does once it has ended.
    for _ in range(6):
        with httpx.Client(base_url=server.url, cookies={COOKIE: stolen}) as other:
            assert other.get("/_midway/api/status").status_code == 401


@pytest.mark.attack(18, "the admin key guessed without limit through headers")
def test_header_guesses_from_one_address_are_spaced_out(server: Server) -> None:
    guesses = 40

    async def flood() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            answers = await asyncio.gather(*(
                client.get("/_midway/api/traffic", headers={"x-api-key": f"guess-{i}"})
                for i in range(guesses)))
        return [a.status_code for a in answers]

    statuses = asyncio.run(flood())
    assert set(statuses) <= {401, 429}
    # Two workers, each: 5 free guesses, then one per SPACING for at most MAX_WAIT; the
    # rest are refused without being looked at.
    evaluated = statuses.count(401)
    assert evaluated <= 2 * (5 + MAX_WAIT / SPACING + 1), statuses
    assert statuses.count(429) >= guesses - evaluated > 0
    log = server.log.read_text()
    assert "wrong admin keys from 127.0.0.1" in log and ADMIN_CANARY not in log


@pytest.mark.attack(18, "failed logins lock the real admin out of the form")
def test_failed_logins_never_lock_out_the_right_key(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        for i in range(30):
            assert login(client, f"wrong-{i}").status_code in (401, 429)
        ok = login(client, ADMIN_CANARY)
        assert ok.status_code == 303, ok.text
        assert client.get("/_midway/api/status").status_code == 200
    with httpx.Client(base_url=server.url) as header:
        answer = header.get("/_midway/api/status", headers={"x-api-key": ADMIN_CANARY})
        assert answer.status_code == 200
