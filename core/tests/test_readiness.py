"""``/livez`` and ``/readyz``: alive is not ready (issue #27)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from midway import Midway, hookimpl
from midway.testing_services import free_port, wait_for, wait_listening


def get(url: str) -> tuple[int, dict[str, Any]]:
    async def go() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return r.status, await r.json()
    return asyncio.run(go())


class Store:
    """A plugin whose store can be told to fail or to hang."""

    __name__ = "flaky_store"

    def __init__(self) -> None:
        self.state = "up"
        self.release = asyncio.Event()

    @hookimpl
    async def check_ready(self, midway: Midway) -> list[str] | None:
        if self.state == "down":
            return ["db.internal:5432: connection refused"]
        if self.state == "raise":
            raise RuntimeError("pool closed")
        if self.state == "hang":
            await asyncio.Event().wait()
        return None


def test_ready_follows_what_plugins_say(midway_factory: Any) -> None:
    store = Store()
    proxy = midway_factory(plugins=[store], ready_timeout=0.2)
    assert get(proxy.url + "/readyz") == (200, {"status": "ready", "problems": []})
    store.state = "down"
    status, body = get(proxy.url + "/readyz")
    assert status == 503
    assert body["problems"] == ["flaky_store: db.internal:5432: connection refused"]
    store.state = "raise"
    assert get(proxy.url + "/readyz")[1]["problems"] == [
        "flaky_store: RuntimeError: pool closed"]
    store.state = "hang"
    assert get(proxy.url + "/readyz")[1]["problems"] == [
        "flaky_store: no answer within 0.2 s"]
    assert get(proxy.url + "/livez") == (200, {"status": "alive"})  # alive all along
    store.state = "up"
    assert get(proxy.url + "/readyz")[0] == 200


def test_not_ready_before_startup_or_while_draining(midway_factory: Any) -> None:
    proxy = midway_factory()
    midway: Midway = proxy.midway
    midway.draining = True
    assert get(proxy.url + "/readyz") == (
        503, {"status": "not ready", "problems": ["draining: shutting down, taking no new work"]})
    midway.draining = False
    midway.started = False
    assert get(proxy.url + "/readyz")[1]["problems"] == [
        "starting: plugins are not started yet"]


def _serve(tmp_path: Path, drain_delay: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "MIDWAY_PLUGINS": "", "MIDWAY_DRAIN_DELAY": drain_delay}
    proc = subprocess.Popen([sys.executable, "-m", "midway.cli", "serve", "--port", str(port),
                             "--data-dir", str(tmp_path), "--upstream", "http://127.0.0.1:9"],
                            env=env, stderr=subprocess.DEVNULL)
    wait_listening(port)
    return proc, f"http://127.0.0.1:{port}"


def test_sigterm_turns_readyz_503_while_still_answering_then_exits_0(tmp_path: Path) -> None:
    """With ``drain_delay``, a SIGTERMed midway keeps listening that long with /readyz 503
    (a load balancer takes it out), then drains and exits 0."""
    proc, base = _serve(tmp_path, "2")
    try:
        wait_for(lambda: get(base + "/readyz")[0] == 200)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_for(lambda: get(base + "/readyz")[0] == 503)
        assert get(base + "/readyz")[1]["problems"][0].startswith("draining")
        assert get(base + "/livez")[0] == 200
        assert proc.wait(15) == 0
        assert time.monotonic() - signalled >= 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_without_drain_delay_sigterm_exits_promptly(tmp_path: Path) -> None:
    proc, _ = _serve(tmp_path, "0")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
