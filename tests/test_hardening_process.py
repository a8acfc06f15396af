"""The process: kill -9 under load (restarted each time), SIGTERM with 50 open streams, and
plugins that raise or hang in each hook, all through ``midway serve`` subprocesses."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from hardening_crash import crash_loop
from hardening_support import MSG, Server, audit_ids, ledger_rows

from midway.testing import FakeUpstream, Reply, wait_for

HERE = Path(__file__).parent
FAULTY_PLUGIN = str(HERE / "hardening_faulty_plugin.py")
CI_CYCLES = 3


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server  # type: ignore[misc]
    server.stop()


def test_kill_9_under_load_then_restart_reconciles(tmp_path: Path) -> None:
    figures = crash_loop(tmp_path, CI_CYCLES)
    assert figures["cycles"] == CI_CYCLES
    assert figures["requests_served"] >= CI_CYCLES * 30


def test_sigterm_with_50_open_streams_finishes_them_and_exits_0(
        tmp_path: Path, fake: FakeUpstream) -> None:
    config = """
[midway]
plugins = ["audit", "billing"]
shutdown_timeout = 30

[audit]
sqlite_synchronous = "normal"
"""
    server = Server(tmp_path, config, fake.url).start()
    fake.fake.default = lambda rec: Reply(delay=0.1, text_chunks=20)  # about 2.5 s per stream
    try:
        async def run() -> list[tuple[int, bytes, str]]:
            async with aiohttp.ClientSession() as session:
                async def one(i: int) -> tuple[int, bytes, str]:
                    async with session.post(server.url + "/v1/messages", data=orjson.dumps(
                            {**MSG, "stream": True, "messages": [
                                {"role": "user", "content": f"stream {i}"}]}),
                            headers={"x-api-key": "sk-ant-term"}) as resp:
                        return resp.status, await resp.read(), \
                            resp.headers["x-midway-request-id"]
                tasks = [asyncio.create_task(one(i)) for i in range(50)]
                while server.health()["open_streams"] < 50:
                    await asyncio.sleep(0.02)
                server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                return await asyncio.gather(*tasks)
        results = asyncio.run(run())
        assert server.proc is not None and server.proc.wait(60) == 0
    finally:
        server.ensure_stopped()
    assert len(results) == 50
    for status, body, _ in results:
        assert status == 200 and body.rstrip().endswith(b'{"type":"message_stop"}')
        assert b"event: error" not in body
    # The queues were flushed before exit: every stream has its record and its ledger row.
    ids = {rid for _, _, rid in results}
    records = audit_ids(server.data_dir)
    assert ids <= set(records) and all(records[i] == 1 for i in ids)
    rows = [r for r in ledger_rows(server.data_dir) if r["exchange_id"] in ids]
    assert len(rows) == 50 and {r["state"] for r in rows} == {"settled"}


REQUEST_HOOKS = ["pre_request", "choose_upstream", "upstream_request", "upstream_response"]
OBSERVER_HOOKS = ["on_chunk", "post_response"]


def test_plugin_raising_or_hanging_in_each_hook(tmp_path: Path, fake: FakeUpstream) -> None:
    # hook_timeout bounds the startup hooks too: audit's starts its writer process (a Python
    # interpreter, about 0.4 s on an idle 2-core machine), which 0.5 s did not always leave
    # room for on a busy one. Each hang costs one hook_timeout per call it hangs in.
    config = """
[midway]
plugins = ["audit", "billing"]
hook_timeout = 2

[audit]
sqlite_synchronous = "normal"
"""
    server = Server(tmp_path, config, fake.url, extra_args=("--plugin", FAULTY_PLUGIN)).start()
    try:
        async def send(fault: str) -> tuple[int, bytes, str]:
            async with aiohttp.ClientSession() as s, s.post(
                    server.url + "/v1/messages", data=orjson.dumps({**MSG, "stream": True}),
                    headers={"x-api-key": "sk-ant-k", "x-hardening-fault": fault}) as r:
                return r.status, await r.read(), r.headers["x-midway-request-id"]
        ids = []
        for hook in REQUEST_HOOKS + OBSERVER_HOOKS:
            for mode in ("raise", "hang"):
                status, body, rid = asyncio.run(send(f"{mode}:{hook}"))
                ids.append(rid)
                if hook in OBSERVER_HOOKS:  # observers: the relay goes on, unchanged
                    assert status == 200, (hook, mode, body[:300])
                    assert body.rstrip().endswith(b'{"type":"message_stop"}'), (hook, mode)
                else:  # request hooks: the request fails clearly, in Anthropic's format
                    assert status == 500, (hook, mode, status)
                    error = orjson.loads(body)["error"]
                    assert error["type"] == "api_error"
                    assert "hardening_faulty_plugin" in error["message"] and hook in \
                        error["message"]
                    assert b"on purpose" not in body
        # Every failure is counted in /metrics, by plugin and hook.
        def counted() -> bool:
            text = server.metrics()
            for hook in REQUEST_HOOKS + OBSERVER_HOOKS:
                series = (f'midway_plugin_errors_total{{hook="{hook}",'
                          'plugin="hardening_faulty_plugin",worker="0"}')
                found = re.search(re.escape(series) + r" (\S+)", text)
                if found is None or float(found.group(1)) < 2:
                    return False
            return True
        wait_for(counted, timeout=10)
        # The other plugins were not disturbed: audit recorded every request, once.
        wait_for(lambda: set(ids) <= set(audit_ids(server.data_dir)), timeout=10)
        assert all(audit_ids(server.data_dir)[i] == 1 for i in ids)
        assert server.health()["open_streams"] == 0
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.ensure_stopped()
