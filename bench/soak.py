"""Soak and crash loops for midway (``nox -s soak``; bounded, loopback only).

1. 10,000 streaming requests, 10% of clients leaving mid-stream, through one ``midway serve``
   worker with audit and billing on SQLite: RSS, open fds and asyncio tasks must return to
   their baseline; peak RSS is reported; audit and ledger must hold every request once.
2. 1,000 concurrent slow streams through the same worker: all complete; memory per open
   stream is reported.
3. kill -9 under load, 20 times, restarting each time: audit and ledger reconcile exactly
   with what the fake upstream served — one ledger row per attempt, one audit record per
   request, none missing (tests/hardening_crash.py asserts it).
4. kill -9 of the audit writer process only, 10 times, the relay restarting it: one record
   and one ledger row per request served, none twice, none lost (tests/hardening_outages.py).
5. a PostgreSQL crash under load behind three instances sharing audit and billing on a private
   server: every answer recorded once and settled once, counters equal to the ledger, and the
   time until every instance answers again (tests/hardening_outages.py).
6. SIGTERM under 1,000 open streams with a 60 s budget (``shutdown_timeout``): half of the
   streams end within the budget, half would run for minutes and are cut at its deadline
   with an ``overloaded_error``; the process must be gone within the budget + 10 s, every
   request audited once and settled once (cut ones at their usage so far).

Prints a JSON report; exits 1 if a check failed. ``--quick`` scales everything down;
``--only NAME`` runs one part.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hardening_crash import crash_loop
from hardening_outages import postgres_restart, writer_kills
from hardening_support import (
    MIDWAY,
    Server,
    audit_ids,
    free_port,
    get_json,
    ledger_rows,
    open_fds,
    rss_kib,
)

from midway.testing import wait_listening

CONFIG = """
[midway]
plugins = ["audit", "billing"]
access_log = false
pool_size = 2000           # one upstream connection per open stream (the default is 256)
shutdown_timeout = 30

[audit]
sqlite_synchronous = "normal"
"""
FAST = orjson.dumps({"delay": 0.002, "text_chunks": 8}).decode()
SETTLE_SECONDS = 120  # longer than an upstream's keep-alive timeout (aiohttp's server: 75 s)
SLOW = orjson.dumps({"delay": 0.5, "text_chunks": 10}).decode()  # ~7 s per stream


class RssSampler:
    """Peak RSS of a process, sampled every 50 ms from a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except (OSError, RuntimeError):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def figures(server: Server) -> dict[str, int]:
    health = server.health()
    return {"rss_kib": rss_kib(server.pid), "fds": open_fds(server.pid),
            "tasks": int(health["tasks"]), "open_streams": int(health["open_streams"])}


def idle(server: Server, timeout: float = 15) -> dict[str, int]:
    """The baseline: no open stream, and the task count steady for half a second."""
    deadline = time.monotonic() + timeout
    last = figures(server)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = figures(server)
        if now["open_streams"] == 0 and now["tasks"] == last["tasks"]:
            return now
        last = now
    return last


def settle(server: Server, baseline: dict[str, int], timeout: float = SETTLE_SECONDS
           ) -> dict[str, Any]:
    """Wait until open streams are 0 and tasks and fds are back at the baseline (or the
    timeout passes); return the figures then, with the seconds it took. Idle keep-alive
    connections to the upstream count as open fds until they are closed."""
    started = time.monotonic()
    while True:
        now: dict[str, Any] = figures(server)
        back = now["open_streams"] == 0 and now["tasks"] <= baseline["tasks"] and \
            now["fds"] <= baseline["fds"]
        if back or time.monotonic() - started > timeout:
            now["settled_after_s"] = round(time.monotonic() - started, 1) if back else None
            return now
        time.sleep(0.1)


async def stream_requests(url: str, total: int, concurrency: int, abort_ratio: float,
                          reply: str, tag: str) -> dict[str, Any]:
    """``total`` streaming requests, ``concurrency`` at a time; a share of clients leave
    after the first text delta."""
    counts = {"tried": 0, "completed": 0, "aborted": 0, "failed": 0}
    failures: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    rng = random.Random(7)
    aborting = set(rng.sample(range(total), int(total * abort_ratio)))
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                counts["tried"] += 1
                body = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64,
                                     "stream": True, "messages": [
                                         {"role": "user", "content": f"{tag} {i}"}]})
                try:
                    resp = await session.post(url + "/v1/messages", data=body, headers={
                        "x-api-key": "sk-ant-soak", "x-fake-reply": reply})
                    if i in aborting:
                        await resp.content.readuntil(b"content_block_delta")
                        resp.close()  # the client leaves mid-stream
                        counts["aborted"] += 1
                        continue
                    data = await resp.read()
                    resp.release()
                    if resp.status == 200 and data.rstrip().endswith(
                            b'{"type":"message_stop"}'):
                        counts["completed"] += 1
                    else:
                        counts["failed"] += 1
                        failures.append(f"{resp.status}: {data[-200:]!r}")
                except (TimeoutError, aiohttp.ClientError) as exc:
                    counts["failed"] += 1
                    failures.append(repr(exc))

        await asyncio.gather(*[worker() for _ in range(concurrency)])
    return {**counts, "failures_sample": failures[:5]}


def soak_streams(tmp: Path, fake_url: str, total: int, concurrency: int) -> dict[str, Any]:
    server = Server(tmp, CONFIG, fake_url, name="soak").start()
    try:
        asyncio.run(stream_requests(server.url, 500, concurrency, 0.1, FAST, "warm-up"))
        before = idle(server)
        with RssSampler(server.pid) as sampler:
            started = time.monotonic()
            half = asyncio.run(stream_requests(server.url, total // 2, concurrency, 0.1, FAST,
                                               "soak-a"))
            middle = settle(server, before)
            rest = asyncio.run(stream_requests(server.url, total - total // 2, concurrency,
                                               0.1, FAST, "soak-b"))
            elapsed = time.monotonic() - started
        after = settle(server, before)
        served = [r for r in get_json(fake_url + "/_fake/requests", timeout=60)
                  if r["path"] == "/v1/messages"]
        cancelled = sum(1 for r in served if r["cancelled"])
        assert server.stop(signal.SIGTERM) == 0
        records = audit_ids(server.data_dir)
        rows = ledger_rows(server.data_dir)
        counts = {k: half[k] + rest[k] for k in ("tried", "completed", "aborted", "failed")}
        expected = counts["tried"] + 500
        checks = {
            "no_failures": counts["failed"] == 0,
            "tasks_back_to_baseline": after["tasks"] <= before["tasks"],
            "fds_back_to_baseline": after["fds"] <= before["fds"],
            "no_open_streams": after["open_streams"] == 0,
            # Memory: the second half must not grow on top of the first (no per-stream leak).
            "rss_flat": after["rss_kib"] <= middle["rss_kib"] + 10 * 1024,
            "audit_one_record_each": len(records) == expected and set(records.values()) == {1},
            "ledger_row_each": len(rows) == expected and
            all(r["state"] == "settled" for r in rows),
        }
        return {"requests": counts, "failures_sample": half["failures_sample"] +
                rest["failures_sample"], "seconds": round(elapsed, 1),
                "requests_per_second": round(counts["tried"] / elapsed),
                "upstream_cancelled_incl_warm_up": cancelled, "before": before, "middle": middle,
                "after": after, "peak_rss_kib": sampler.peak,
                "audit_records": len(records), "ledger_rows": len(rows), "checks": checks}
    finally:
        server.ensure_stopped()


def slow_streams(tmp: Path, fake_url: str, n: int, bare: bool = False) -> dict[str, Any]:
    config = CONFIG.replace('plugins = ["audit", "billing"]', "plugins = []") if bare else CONFIG
    server = Server(tmp, config, fake_url, name="slow").start()
    try:
        asyncio.run(stream_requests(server.url, 50, 50, 0.0, FAST, "warm-up"))
        before = idle(server)
        plateau: dict[str, int] = {}

        async def run() -> dict[str, Any]:
            task = asyncio.create_task(stream_requests(server.url, n, n, 0.0, SLOW, "slow"))
            while server.health()["open_streams"] < n and not task.done():
                await asyncio.sleep(0.05)
            plateau.update(figures(server))
            return await task

        with RssSampler(server.pid) as sampler:
            result = asyncio.run(run())
        after = settle(server, before)
        assert server.stop(signal.SIGTERM) == 0
        per_stream = (plateau["rss_kib"] - before["rss_kib"]) / n
        return {"streams": n, "requests": {k: result[k] for k in ("tried", "completed",
                                                                   "failed")},
                "failures_sample": result["failures_sample"], "before": before,
                "at_plateau": plateau, "after": after, "peak_rss_kib": sampler.peak,
                "per_stream_kib": round(per_stream, 1),
                "per_stream_kib_peak": round((sampler.peak - before["rss_kib"]) / n, 1),
                "checks": {"all_completed": result["completed"] == n,
                           "all_open_at_once": plateau["open_streams"] == n,
                           "tasks_back_to_baseline": after["tasks"] <= before["tasks"],
                           "fds_back_to_baseline": after["fds"] <= before["fds"]}}
    finally:
        server.ensure_stopped()


DRAIN_CONFIG = """
[midway]
plugins = ["audit", "billing"]
access_log = false
pool_size = 2000
shutdown_timeout = {budget}

[audit]
sqlite_synchronous = "normal"
"""
DRAIN_MARGIN = 10.0  # what docs/deploying.md tells a supervisor to allow beyond the budget


async def open_streams(server: Server, n: int, budget: float) -> dict[str, Any]:
    """``n`` streams, half short enough to end within the drain, half far longer; SIGTERM
    once all are open; the clients' outcomes and how long the process took to exit."""
    short = orjson.dumps({"delay": budget / 100, "text_chunks": 20}).decode()  # ~budget/4
    long = orjson.dumps({"delay": budget / 20, "text_chunks": 100}).decode()  # ~5 x budget
    outcomes = {"completed": 0, "cut_overloaded": 0, "failed": 0}
    failures: list[str] = []
    ids: list[str] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=budget * 10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def one(i: int) -> None:
            body = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64,
                                 "stream": True, "messages": [
                                     {"role": "user", "content": f"drain {i}"}]})
            try:
                async with session.post(server.url + "/v1/messages", data=body, headers={
                        "x-api-key": "sk-ant-soak", "x-soak": "drain",
                        "x-fake-reply": short if i % 2 else long}) as resp:
                    ids.append(resp.headers.get("x-midway-request-id", "?"))
                    data = await resp.read()
                if resp.status == 200 and data.rstrip().endswith(b'{"type":"message_stop"}'):
                    outcomes["completed"] += 1
                elif resp.status == 200 and b"event: error" in data and \
                        b'"overloaded_error"' in data:
                    outcomes["cut_overloaded"] += 1
                else:
                    outcomes["failed"] += 1
                    failures.append(f"{resp.status}: {data[-200:]!r}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                outcomes["failed"] += 1
                failures.append(repr(exc))

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        while server.health()["open_streams"] < n:
            if all(t.done() for t in tasks):
                break
            await asyncio.sleep(0.1)
        signalled = time.monotonic()
        stopped = asyncio.create_task(asyncio.to_thread(server.stop, signal.SIGTERM,
                                                        budget + 60))
        await asyncio.gather(*tasks)
        code = await stopped
        drain = time.monotonic() - signalled
    return {**outcomes, "exit_code": code, "drain_seconds": round(drain, 1), "ids": ids,
            "failures_sample": failures[:5]}


def sigterm_drain(tmp: Path, fake_url: str, n: int, budget: float) -> dict[str, Any]:
    server = Server(tmp, DRAIN_CONFIG.format(budget=budget), fake_url, name="drain").start()
    try:
        result = asyncio.run(open_streams(server, n, budget))
        served = [r for r in get_json(fake_url + "/_fake/requests", timeout=60)
                  if r["path"] == "/v1/messages" and r["headers"].get("x-soak") == "drain"]
        records = audit_ids(server.data_dir)
        rows = ledger_rows(server.data_dir)
        ids = set(result.pop("ids"))
        per_exchange: dict[str, int] = {}
        for row in rows:
            per_exchange[row["exchange_id"]] = per_exchange.get(row["exchange_id"], 0) + 1
        unsettled = [r["exchange_id"] for r in rows if r["state"] != "settled"]
        unpriced_cuts = [r["exchange_id"] for r in rows
                         if r["error"] and r["input_tokens"] == 0]
        duplicates = sum(c - 1 for c in records.values() if c > 1) + \
            sum(c - 1 for c in per_exchange.values() if c > 1)
        losses = len(ids - set(records)) + len(ids - set(per_exchange))
        return {"streams": n, "budget_s": budget, **result,
                "requests_served_upstream": len(served), "audit_records": len(records),
                "ledger_rows": len(rows), "duplicates": duplicates, "losses": losses,
                "unsettled_rows": len(unsettled), "cut_rows_without_usage": len(unpriced_cuts),
                "checks": {
                    "exit_0": result["exit_code"] == 0,
                    "within_budget_and_margin": result["drain_seconds"] <= budget +
                    DRAIN_MARGIN,
                    "every_client_completed_or_told_overloaded": result["failed"] == 0 and
                    result["completed"] + result["cut_overloaded"] == n,
                    "short_streams_completed": result["completed"] >= n // 2,
                    "served_upstream_each": len(served) == n == len(ids),
                    "no_duplicates": duplicates == 0, "no_losses": losses == 0,
                    "all_settled": not unsettled, "cuts_keep_their_usage": not unpriced_cuts}}
    finally:
        server.ensure_stopped()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--slow", type=int, default=1_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--writer-kills", type=int, default=10)
    parser.add_argument("--drain-streams", type=int, default=1_000)
    parser.add_argument("--drain-budget", type=float, default=60.0)
    parser.add_argument("--bare", action="store_true",
                        help="slow_streams without plugins (the core's own share)")
    parser.add_argument("--only", help="run only these parts (comma-separated: soak, "
                        "slow_streams, kill_9, writer_kills, postgres_restart, sigterm_drain)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.slow, args.kills, args.writer_kills = 1_000, 100, 2, 3
        args.drain_streams, args.drain_budget = 100, 10.0
    only = set(args.only.split(",")) if args.only else None
    report: dict[str, Any] = {}
    port = free_port()
    fake = subprocess.Popen([*MIDWAY, "mock-upstream", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fake_url = f"http://127.0.0.1:{port}"
    try:
        wait_listening(port, timeout=30)
        with tempfile.TemporaryDirectory(prefix="midway-soak-") as tmp:
            root = Path(tmp)
            for part in ("soak", "slow", "kill", "writer", "pg", "drain"):
                (root / part).mkdir()
            for name, run in (
                    ("soak", lambda: soak_streams(root / "soak", fake_url, args.requests,
                                                  args.concurrency)),
                    ("slow_streams", lambda: slow_streams(root / "slow", fake_url, args.slow,
                                                               args.bare)),
                    ("kill_9", lambda: _kill_checks(crash_loop(root / "kill", args.kills))),
                    ("writer_kills", lambda: writer_kills(root / "writer", args.writer_kills)),
                    ("postgres_restart", lambda: postgres_restart(root / "pg")),
                    ("sigterm_drain", lambda: sigterm_drain(root / "drain", fake_url,
                                                            args.drain_streams,
                                                            args.drain_budget))):
                if only is not None and name not in only:
                    continue
                started = time.monotonic()
                print(f"soak: {name} ...", file=sys.stderr, flush=True)
                try:
                    report[name] = run()
                except AssertionError as exc:
                    report[name] = {"checks": {"assertion": False}, "error": str(exc)[:2000]}
                report[name]["wall_seconds"] = round(time.monotonic() - started, 1)
    finally:
        fake.terminate()
        fake.wait(10)
    ok = all(all(part["checks"].values()) for part in report.values())
    report["ok"] = ok
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if ok else 1


def _kill_checks(found: dict[str, Any]) -> dict[str, Any]:
    """crash_loop asserted the reconciliation; its figures say it again in the report."""
    return {**found, "checks": {
        "reconciled": True,
        "audit_every_answer_recorded": found["answered_but_unrecorded_at_kill"] == 0,
        "audit_one_record_per_request": found["audit_records"] ==
        found["requests_reaching_upstream"] + found["audit_records_never_sent_upstream"]}}




if __name__ == "__main__":
    sys.exit(main())
