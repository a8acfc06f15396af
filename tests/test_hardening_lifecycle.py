"""The process's life: SIGTERM drains within one deadline (issue #18 item 2), the workers of a
killed supervisor exit (item 7), a worker that keeps dying is restarted with back-off while
the others serve (item 8). Real ``midway serve`` subprocesses throughout."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from hardening_support import MSG, Left, Server, audit_ids, descendants, get_json, ledger_rows

from midway.fake_upstream import RecordedRequest
from midway.testing import FakeUpstream, Reply, wait_for

BUDGET = 4.0  # shutdown_timeout of the drain test
MARGIN = 3.0  # process exit after the deadline: interpreter teardown, audit writer exit
NO_PLUGINS = """
[midway]
plugins = []
access_log = false
"""


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server  # type: ignore[misc]
    server.stop()


def test_sigterm_cuts_streams_open_at_the_deadline_and_records_them(
        tmp_path: Path, fake: FakeUpstream) -> None:
    config = f"""
[midway]
plugins = ["audit", "billing"]
access_log = false
shutdown_timeout = {BUDGET}

[audit]
sqlite_synchronous = "normal"
"""
    n = 10
    server = Server(tmp_path, config, fake.url).start()
    fake.fake.default = lambda rec: Reply(delay=0.5, text_chunks=400)  # minutes per stream
    try:
        async def run() -> tuple[list[tuple[int, bytes, str]], float]:
            async with aiohttp.ClientSession() as session:
                async def one(i: int) -> tuple[int, bytes, str]:
                    async with session.post(server.url + "/v1/messages", data=orjson.dumps(
                            {**MSG, "stream": True, "messages": [
                                {"role": "user", "content": f"long stream {i}"}]}),
                            headers={"x-api-key": "sk-ant-term"}) as resp:
                        await resp.content.readuntil(b"content_block_delta")  # under way
                        return resp.status, await resp.read(), \
                            resp.headers["x-midway-request-id"]
                tasks = [asyncio.create_task(one(i)) for i in range(n)]
                while server.health()["open_streams"] < n:
                    await asyncio.sleep(0.02)
                signalled = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                return await asyncio.gather(*tasks), signalled
        results, signalled = asyncio.run(run())
        assert server.proc is not None
        code = server.proc.wait(BUDGET + 30)
        took = time.monotonic() - signalled
    finally:
        server.ensure_stopped()
    assert code == 0
    assert took <= BUDGET + MARGIN, f"the drain took {took:.1f} s for a {BUDGET} s budget"
    for status, body, _ in results:
        assert status == 200
        # Cut by the shutdown, and told so in-band: an overloaded_error, to be retried.
        assert body.rstrip().endswith(b'"message":"midway is shutting down; retry the '
                                      b'request"}}'), body[-300:]
        assert b"event: error" in body and b'"overloaded_error"' in body
        assert b"message_stop" not in body
    ids = {rid for _, _, rid in results}
    records = audit_ids(server.data_dir)
    assert ids <= set(records) and all(records[i] == 1 for i in ids)
    with sqlite3.connect(server.data_dir / "audit.db") as con:
        data = {row[0]: orjson.loads(row[1]) for row in con.execute(
            "SELECT request_id, data FROM audit_records")}
    for i in ids:
        assert (data[i]["error"], data[i]["error_type"]) == ("cut by shutdown",
                                                            "overloaded_error"), data[i]
    rows = [r for r in ledger_rows(server.data_dir) if r["exchange_id"] in ids]
    # Each settled with the usage seen before the cut (message_start's input tokens).
    assert len(rows) == n and {r["state"] for r in rows} == {"settled"}
    assert all(r["input_tokens"] > 0 and r["error"] for r in rows), rows


def test_during_the_drain_new_and_unanswered_requests_get_529_overloaded(
        tmp_path: Path, fake: FakeUpstream) -> None:
    config = f"""
[midway]
plugins = []
access_log = false
shutdown_timeout = {BUDGET}
"""
    server = Server(tmp_path, config, fake.url).start()

    def reply(rec: RecordedRequest) -> Reply:
        content = rec.body.decode()
        if "think" in content:  # the upstream sends nothing for minutes
            return Reply(first_byte_delay=300)
        if "stream" in content:  # keeps the drain going
            return Reply(delay=0.5, text_chunks=400)
        return Reply()
    fake.fake.default = reply

    def body(text: str, stream: bool = False) -> bytes:
        return orjson.dumps({**MSG, "stream": stream,
                             "messages": [{"role": "user", "content": text}]})
    headers = {"x-api-key": "sk-ant-drain"}
    try:
        async def run() -> tuple[int, bytes, int, bytes, bytes]:
            # One kept-alive connection, used before and after the SIGTERM.
            kept = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            others = aiohttp.ClientSession()
            async with kept, others:
                async with kept.post(server.url + "/v1/messages", data=body("hi"),
                                     headers=headers) as resp:
                    assert resp.status == 200
                    await resp.read()
                stream = await others.post(server.url + "/v1/messages",
                                           data=body("stream", True), headers=headers)
                await stream.content.readuntil(b"content_block_delta")
                thinking = asyncio.create_task(others.post(
                    server.url + "/v1/messages", data=body("think"), headers=headers))
                await asyncio.to_thread(wait_for, lambda: len(fake.messages_requests) == 3,
                                        timeout=10)
                server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                await asyncio.to_thread(wait_for, lambda: _refused(server.port), timeout=10)
                async with kept.post(server.url + "/v1/messages", data=body("late"),
                                     headers=headers) as late:
                    late_status, late_body = late.status, await late.read()
                unanswered = await thinking
                unanswered_body = await unanswered.read()
                return late_status, late_body, unanswered.status, unanswered_body, \
                    await stream.read()
        late_status, late_body, status, unanswered, streamed = asyncio.run(run())
        assert server.proc is not None and server.proc.wait(BUDGET + 30) == 0
    finally:
        server.ensure_stopped()
    overloaded = {"type": "error", "error": {"type": "overloaded_error",
                                             "message": "midway is shutting down; retry the "
                                                        "request"}}
    for got_status, got in ((late_status, late_body), (status, unanswered)):
        answer = orjson.loads(got)
        assert got_status == 529 and answer.pop("request_id").startswith("mw_")
        assert answer == overloaded
    assert b'"overloaded_error"' in streamed and b"message_stop" not in streamed
    assert len(fake.messages_requests) == 3  # the late request never went upstream


def _worker_pids(server: Server) -> list[int]:
    return descendants(server.pid)


def _exited(fd: int, timeout: float) -> bool:
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready)


def _refused(port: int) -> bool:
    """True once nothing listens on ``port``; False while something does or is closing it."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # The listener closed while this handshake sat in its backlog: the next probe decides.
        return False
    return False


def test_killing_the_supervisor_makes_its_workers_exit(tmp_path: Path,
                                                       fake: FakeUpstream) -> None:
    server = Server(tmp_path, NO_PLUGINS, fake.url, extra_args=("--workers", "2")).start()
    try:
        wait_for(lambda: len(_worker_pids(server)) == 2, timeout=30)
        workers = Left(server.pid)
        try:
            server.proc.kill()  # type: ignore[union-attr]
            server.proc.wait(10)  # type: ignore[union-attr]
            left = workers.wait(15)
            if left:
                workers.kill()
            assert not left, f"workers {left} outlived their supervisor"
        finally:
            workers.close()
        assert _refused(server.port), "the port still accepts connections"
    finally:
        server.ensure_stopped()


def _healthz(url: str) -> dict[str, object]:
    return get_json(url + "/healthz")  # type: ignore[no-any-return]


def test_a_worker_that_keeps_dying_is_restarted_with_back_off_while_the_other_serves(
        tmp_path: Path, fake: FakeUpstream) -> None:
    server = Server(tmp_path, NO_PLUGINS, fake.url, extra_args=("--workers", "2")).start()
    try:
        def status() -> dict[int, int]:
            result = server.cli("status", "--port", str(server.port), "--json")
            if result.returncode != 0:
                return {}
            return {w["worker"]: w["pid"] for w in orjson.loads(result.stdout)["workers"]
                    if w["alive"]}

        wait_for(lambda: len(status()) == 2, timeout=30)
        for _ in range(6):  # six deaths of worker 0 within a minute
            victim = status()[0]
            pidfd = os.pidfd_open(victim)
            try:
                os.kill(victim, signal.SIGKILL)
                assert _exited(pidfd, 10)
            finally:
                os.close(pidfd)
            # The other worker serves meanwhile.
            for _ in range(5):
                assert _healthz(server.url)["status"] == "ok"
            wait_for(lambda: status().get(0) not in (None, victim), timeout=30)
        assert server.proc is not None and server.proc.poll() is None
        req = urllib.request.Request(server.url + "/v1/messages", data=orjson.dumps(MSG),
                                     headers={"x-api-key": "sk-ant-x",
                                              "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.ensure_stopped()
    log = server.log.read_text()
    # One line for the episode, not one per death.
    assert log.count("worker 0 (pid") == 1, log[-3000:]
