"""kill -9 under load: every acknowledged record survives, the chain stays intact, and every
request the upstream served ends up with exactly one record — written by the surviving writer
process when only the relay is killed, by the restart when both are.

"Acknowledged" (docs/audit.md): ``GET /_midway/audit/status`` reported a ``committed_seq``
at or above the record's seq, i.e. the transaction holding it had committed. The rest is the
write-ahead intents' work: the restart records the requests the killed process had in flight.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import HEADERS

from midway.testing import free_port, wait_for

MIDWAY = [sys.executable, "-c", "from midway.cli import main; main()"]
ID_PLUGIN = str(Path(__file__).parent / "upstream_id_plugin.py")
INTERRUPTED = "midway stopped before the request finished"
HELD = 3  # requests the upstream is still answering when the kill comes
HOLD = {"x-fake-reply": orjson.dumps({"first_byte_delay": 120}).decode()}


def healthy(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def serve(data_dir: Path, upstream: str, log: Path, workers: int = 1,
          extra: tuple[str, ...] = (), env: dict[str, str] | None = None
          ) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "MIDWAY_PLUGINS": "audit", "MIDWAY_ACCESS_LOG": "false",
           "MIDWAY_AUDIT__BATCH_SIZE": "32", **(env or {})}
    proc = subprocess.Popen([*MIDWAY, "serve", "--port", str(port), "--upstream", upstream,
                             "--data-dir", str(data_dir), "--workers", str(workers), *extra],
                            env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: healthy(url) or proc.poll() is not None, timeout=30)
    assert proc.poll() is None, log.read_text()
    return proc, url


@pytest.fixture
def upstream_url() -> Iterator[str]:
    """``midway mock-upstream`` in a process of its own (it lists what it served)."""
    port = free_port()
    proc = subprocess.Popen([*MIDWAY, "mock-upstream", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy_upstream(url), timeout=30)
        yield url
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(10)


def audit_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MIDWAY, "audit", *args, "--data-dir", str(data_dir)],
                          env={**os.environ, "MIDWAY_PLUGINS": "audit"}, capture_output=True,
                          text=True, timeout=60)


def _received_headers(upstream_url: str) -> list[dict[str, str]]:
    """The headers (lower-case names) of every /v1/messages request the upstream received."""
    import urllib.request
    with urllib.request.urlopen(f"{upstream_url}/_fake/requests", timeout=30) as resp:
        return [{k.lower(): v for k, v in r["headers"].items()}
                for r in orjson.loads(resp.read()) if r["path"] == "/v1/messages"]


def served_ids(upstream_url: str) -> list[str]:
    """The midway request of every request the upstream received (upstream_id_plugin)."""
    return [h["x-audit-test-request"] for h in _received_headers(upstream_url)]


def held_ids(upstream_url: str) -> set[str]:
    """The midway ids of the ``HOLD`` requests the upstream has received."""
    return {h["x-audit-test-request"] for h in _received_headers(upstream_url)
            if "x-fake-reply" in h}


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # exited (a zombie until whoever adopted it reaps it)


def _records(data_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    verified = orjson.loads(audit_cli("verify", "--json", data_dir=data_dir).stdout)
    assert verified["ok"], verified
    assert verified["checked"] == verified["head_seq"]
    stored = orjson.loads(audit_cli("query", "--json", "--limit", "100000",
                                    data_dir=data_dir).stdout)
    by_id = {r["id"]: r for r in stored}
    assert len(by_id) == len(stored) == verified["head_seq"]  # one record each
    return verified, by_id


def _check_interrupted(by_id: dict[str, dict[str, Any]], data_dir: Path) -> set[str]:
    recovered = {i for i, r in by_id.items() if r.get("interrupted")}
    for request_id in recovered:
        record = by_id[request_id]
        assert record["status"] is None and record["error"] == INTERRUPTED, record
        assert record["principal"] and record["path"] == "/v1/messages"
        assert record["model"] == "claude-sonnet-4-6"
    # no intent is left, and the interrupted records read like any other
    with sqlite3.connect(data_dir / "audit.db") as con:
        assert con.execute("SELECT COUNT(*) FROM audit_intents").fetchone() == (0,)
    if recovered:
        shown = orjson.loads(audit_cli("show", "--json", next(iter(recovered)),
                                       data_dir=data_dir).stdout)
        assert shown["interrupted"] is True and shown["request_body"] is None
    return recovered


def test_kill_9_of_the_relay_its_writer_records_every_served_request(tmp_path, upstream_url):
    """The writer process outlives the relay: it commits what it was handed and records the
    requests in flight as interrupted — no restart needed."""
    server = None
    try:
        server, url = serve(tmp_path, upstream_url, tmp_path / "midway.log",
                            extra=("--plugin", ID_PLUGIN))
        acked, answered, writer_pid = asyncio.run(
            load_then_kill(url, upstream_url, server, writer=False))
        assert acked >= 200
        server.wait(10)
        assert server.returncode == -signal.SIGKILL
        wait_for(lambda: _process_gone(writer_pid), timeout=60)

        verified, by_id = _records(tmp_path)
        assert verified["head_seq"] >= acked  # every acknowledged record, and more
        served = served_ids(upstream_url)
        assert len(served) == len(set(served))
        # exact reconciliation: every request the upstream served has its record; a record
        # the upstream never saw is an intent whose request was killed before it was sent
        assert set(served) <= set(by_id)
        recovered = _check_interrupted(by_id, tmp_path)
        assert set(by_id) - set(served) <= recovered
        assert held_ids(upstream_url) <= recovered
        # A request answered just before the kill, whose record the relay had not yet handed
        # over, is recorded as interrupted: at most one per client.
        assert answered <= set(by_id) and len(answered & recovered) <= 20
    finally:
        _stop(server)


def test_kill_9_of_relay_and_writer_then_restart_records_every_served_request_once(
        tmp_path, upstream_url):
    """Both processes killed at once (a container's kill): acknowledged records survive;
    with durable write-ahead the restart records every request the upstream served."""
    server = None
    durable = {"MIDWAY_AUDIT__WRITE_AHEAD": "durable"}
    try:
        log = tmp_path / "midway.log"
        server, url = serve(tmp_path, upstream_url, log, extra=("--plugin", ID_PLUGIN),
                            env=durable)
        acked, answered, writer_pid = asyncio.run(
            load_then_kill(url, upstream_url, server, writer=True))
        assert acked >= 200
        server.wait(10)
        assert server.returncode == -signal.SIGKILL
        wait_for(lambda: _process_gone(writer_pid), timeout=10)

        verified, by_id = _records(tmp_path)
        ids = set(by_id)
        assert verified["head_seq"] >= acked
        # only requests that were answered. A client may miss the end of an answer the
        # server had finished (and recorded) when the kill reset its connection: at most
        # one per client.
        assert len(ids - answered) <= 20
        served = served_ids(upstream_url)
        assert len(served) == len(set(served)) > len(ids)  # some were in flight or queued

        # restart on the same store: the intents left behind become records, appended to
        # the chain, which goes on from the committed head
        server, url = serve(tmp_path, upstream_url, log, extra=("--plugin", ID_PLUGIN),
                            env=durable)
        after = asyncio.run(send(url, 10))
        server.send_signal(signal.SIGTERM)  # graceful: the queue is flushed
        assert server.wait(30) == 0
        verified_again, by_id = _records(tmp_path)
        recovered = _check_interrupted(by_id, tmp_path)
        assert held_ids(upstream_url) <= recovered and not recovered & ids
        assert verified_again["head_seq"] == verified["head_seq"] + len(recovered) + 10
        assert set(served_ids(upstream_url)) <= set(by_id)
        assert set(by_id) - set(served_ids(upstream_url)) <= recovered
        assert answered <= set(by_id)
        assert after <= set(by_id) and not after & recovered
    finally:
        _stop(server)


def healthy_upstream(url: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1):
            return True
    except OSError:
        return False


async def send(url: str, n: int) -> set[str]:
    ids = set()
    async with aiohttp.ClientSession() as session:
        for i in range(n):
            async with session.post(f"{url}/v1/messages", headers=HEADERS, json={
                    "model": "claude-sonnet-4-6", "max_tokens": 5, "stream": True,
                    "messages": [{"role": "user", "content": f"after restart {i}"}]}) as resp:
                await resp.read()
                ids.add(resp.headers["x-midway-request-id"])
    return ids


async def load_then_kill(url: str, upstream_url: str, server: subprocess.Popen[bytes],
                         writer: bool) -> tuple[int, set[str], int]:
    """Keep 20 clients busy; once 200+ records are acknowledged and the upstream is holding
    the ``HELD`` requests, kill -9 the relay (and, with ``writer``, its writer process first)
    right after a status poll. Returns the last acknowledged seq, the ids of every answered
    request and the writer's pid."""
    answered: set[str] = set()
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:

        async def held() -> None:
            # The upstream sits on these until after the kill: without them, a fast writer
            # can have committed every served request's record when the kill lands.
            try:
                async with session.post(f"{url}/v1/messages", headers={**HEADERS, **HOLD},
                                        json={"model": "claude-sonnet-4-6", "max_tokens": 5,
                                              "messages": [{"role": "user", "content": "hold"}]
                                              }) as resp:
                    await resp.read()
            except aiohttp.ClientError:
                # the kill; one answered before it would have a record, not an intent, and
                # fail ``held_ids(...) <= recovered``
                return

        async def client(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    async with session.post(f"{url}/v1/messages", headers=HEADERS, json={
                            "model": "claude-sonnet-4-6", "max_tokens": 5,
                            "stream": i % 2 == 0,
                            "messages": [{"role": "user", "content": f"c{n} {i}"}]}) as resp:
                        await resp.read()
                        answered.add(resp.headers["x-midway-request-id"])
                except (aiohttp.ClientError, KeyError):
                    if stop.is_set():
                        return
                    await asyncio.sleep(0.01)

        clients = [asyncio.create_task(client(n)) for n in range(20)]
        clients += [asyncio.create_task(held()) for _ in range(HELD)]
        acked = writer_pid = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            async with session.get(f"{url}/_midway/audit/status") as resp:
                status = await resp.json()
            acked, writer_pid = status["committed_seq"], status["writer_pid"]
            if acked >= 200 and len(held_ids(upstream_url)) == HELD:
                if writer:
                    os.kill(writer_pid, signal.SIGKILL)
                os.kill(server.pid, signal.SIGKILL)
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
    return acked, answered, writer_pid


def test_two_worker_processes_share_one_sqlite_chain(tmp_path, upstream_url):
    server = None
    try:
        server, url = serve(tmp_path, upstream_url, tmp_path / "midway.log", workers=2)
        seen: set[int] = set()

        def both_workers_up() -> bool:  # a fresh connection each time: any worker may take it
            import urllib.request
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                seen.add(orjson.loads(resp.read())["worker"])
            return seen == {0, 1}

        wait_for(both_workers_up, timeout=30)

        async def load() -> tuple[set[str], set[int]]:
            ids, workers = set(), set()
            async with aiohttp.ClientSession() as session:

                async def one(i: int) -> None:
                    async with session.post(f"{url}/v1/messages", headers=HEADERS, json={
                            "model": "claude-sonnet-4-6", "max_tokens": 5, "stream": i % 2 == 0,
                            "messages": [{"role": "user", "content": f"w {i}"}]}) as resp:
                        await resp.read()
                        ids.add(resp.headers["x-midway-request-id"])
                    async with session.get(f"{url}/healthz") as resp:
                        workers.add((await resp.json())["worker"])

                await asyncio.gather(*(one(i) for i in range(300)))
            return ids, workers

        ids, workers = asyncio.run(load())
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        verified = orjson.loads(audit_cli("verify", "--json", data_dir=tmp_path).stdout)
        assert verified["ok"], verified
        assert verified["head_seq"] == verified["checked"] == 300
        stored = orjson.loads(audit_cli("query", "--json", "--limit", "1000",
                                        data_dir=tmp_path).stdout)
        assert {r["id"] for r in stored} == ids
        assert workers == {0, 1}  # both processes served (and so wrote) requests
    finally:
        _stop(server)


SLOW = {"x-fake-reply": orjson.dumps({"delay": 0.4, "text_chunks": 10}).decode()}
IN_FLIGHT = 16


def _intents(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "audit.db") as con:
        return int(con.execute("SELECT COUNT(*) FROM audit_intents").fetchone()[0])


def test_kill_9_of_the_writer_only_records_requests_in_flight_once(tmp_path, upstream_url):
    """Issue 18.1: the relay lives on and restarts its writer process; the new writer must not
    take the dead one's intents — requests still in flight on the relay — for a dead
    instance's: each of them gets its real record, once, and none is interrupted."""
    server = None
    try:
        server, url = serve(tmp_path, upstream_url, tmp_path / "midway.log",
                            extra=("--plugin", ID_PLUGIN))

        async def run() -> tuple[set[str], dict[str, Any]]:
            async with aiohttp.ClientSession() as session:

                async def stream(i: int) -> str:
                    async with session.post(f"{url}/v1/messages", headers={**HEADERS, **SLOW},
                                            json={"model": "claude-sonnet-4-6", "max_tokens": 5,
                                                  "stream": True, "messages": [
                                                      {"role": "user", "content": f"s{i}"}]}
                                            ) as resp:
                        body = await resp.read()
                        assert resp.status == 200 and b"message_stop" in body
                        return str(resp.headers["x-midway-request-id"])

                async def status() -> dict[str, Any]:
                    async with session.get(f"{url}/_midway/audit/status") as resp:
                        return dict(await resp.json())

                streams = [asyncio.create_task(stream(i)) for i in range(IN_FLIGHT)]
                # every stream reached the upstream, and its intent is committed
                while len(held_ids(upstream_url)) < IN_FLIGHT or _intents(tmp_path) < IN_FLIGHT:
                    await asyncio.sleep(0.02)
                first = await status()
                os.kill(first["writer_pid"], signal.SIGKILL)
                while (await status()).get("writer_pid") in (first["writer_pid"], None):
                    await asyncio.sleep(0.02)
                assert not any(s.done() for s in streams), "the streams outlived the kill"
                ids = set(await asyncio.gather(*streams))
                return ids, await status()

        ids, after = asyncio.run(run())
        assert after["writer_restarts"] == 1
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        _, by_id = _records(tmp_path)  # one record per id, and the chain verifies
        assert set(by_id) == ids and len(ids) == IN_FLIGHT
        assert not [i for i, r in by_id.items() if r.get("interrupted")]
        assert {r["status"] for r in by_id.values()} == {200}
        assert _intents(tmp_path) == 0
    finally:
        _stop(server)


def test_kill_9_of_a_writer_stuck_on_its_store_loses_none_of_the_records_it_had_taken(
        tmp_path, upstream_url):
    """Issue 18.1: records the killed writer had taken from the ring but not committed (its
    store was locked) are read again by the new writer: each request has its real record,
    once — none lost, none interrupted."""
    server = None
    lock = None
    try:
        server, url = serve(tmp_path, upstream_url, tmp_path / "midway.log",
                            extra=("--plugin", ID_PLUGIN))

        async def run() -> tuple[set[str], dict[str, Any]]:
            nonlocal lock
            async with aiohttp.ClientSession() as session:

                async def status() -> dict[str, Any]:
                    async with session.get(f"{url}/_midway/audit/status") as resp:
                        return dict(await resp.json())

                ids = await send(url, 2)
                while (await status()).get("committed_seq", 0) < 2:
                    await asyncio.sleep(0.02)
                # Another process holds the store's write lock: the writer takes the next
                # records from the ring but cannot commit them.
                lock = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
                lock.execute("BEGIN IMMEDIATE")
                ids |= await send(url, 10)
                while (await status()).get("records_taken", 0) < 12:
                    await asyncio.sleep(0.02)
                first = await status()
                assert first["committed_seq"] == 2
                os.kill(first["writer_pid"], signal.SIGKILL)
                lock.execute("ROLLBACK")
                lock.close()
                lock = None
                while (await status()).get("committed_seq", 0) < 12:
                    await asyncio.sleep(0.02)
                return ids, await status()

        ids, after = asyncio.run(run())
        assert after["writer_restarts"] == 1
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        _, by_id = _records(tmp_path)  # one record per id, and the chain verifies
        assert set(by_id) == ids and len(ids) == 12
        assert not [i for i, r in by_id.items() if r.get("interrupted")]
        assert {r["status"] for r in by_id.values()} == {200}
    finally:
        if lock is not None:
            lock.close()
        _stop(server)
