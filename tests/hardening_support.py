"""Helpers of the hardening suite: midway as a subprocess, canaries, resource probes, stores.

The tests run ``midway serve`` the way an operator does (a process with a config file and a
data dir) whenever the property under test is about the process: its logs, its files, its exit
code, its file descriptors. The fake upstream runs in the test process, so every header it
received (credentials included) can be inspected.
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from midway.testing import free_port, wait_for

MIDWAY = [sys.executable, "-m", "midway.cli"]

# Canary credentials: distinctive strings that must never come back out of midway.
CLIENT_CANARY = "mw-canary-client-hardening-5d1e07"
UPSTREAM_CANARY = "sk-ant-canary-upstream-hardening-77c3a1"
UPSTREAM_CANARY_2 = "sk-ant-canary-upstream-second-0b9e44"
ADMIN_CANARY = "adm-canary-hardening-31f2c8"
CANARY_ENV = {"HARDEN_CLIENT_KEY": CLIENT_CANARY, "HARDEN_UPSTREAM_KEY": UPSTREAM_CANARY,
              "HARDEN_UPSTREAM_KEY_2": UPSTREAM_CANARY_2, "HARDEN_ADMIN_KEY": ADMIN_CANARY}

MSG = {"model": "claude-sonnet-4-6", "max_tokens": 32,
       "messages": [{"role": "user", "content": "hello"}]}


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return orjson.loads(resp.read())


def _healthy(url: str) -> bool:
    try:
        return get_json(url + "/healthz", timeout=1)["status"] == "ok"  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return False


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int | None = None) -> int:
    return len(os.listdir(f"/proc/{pid or 'self'}/fd"))


def descendants(pid: int) -> list[int]:
    """The processes under ``pid`` (workers, midway-audit's writer), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        # The command (2nd field) may hold spaces and parentheses: the parent comes after it.
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


class Left:
    """The processes under a midway process, held by pidfd (their pids may be reused once
    they exit): a killed midway's audit writer outlives it until it has written what it got."""

    def __init__(self, pid: int) -> None:
        self.fds: dict[int, int] = {}
        for child in descendants(pid):
            try:
                self.fds[os.pidfd_open(child)] = child
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> list[int]:
        """Wait until they have all exited; return the pids still running after
        ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.fds and (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(self.fds), [], [], remaining)
            for fd in ready:  # a pidfd is readable once its process has exited
                del self.fds[fd]
                os.close(fd)
        return sorted(self.fds.values())

    def kill(self) -> None:
        for fd in self.fds:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


class Server:
    """``midway serve`` in a subprocess, logging to a file."""

    def __init__(self, tmp: Path, config: str, upstream: str, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, name: str = "midway") -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.config_path = tmp / f"{name}.toml"
        self.config_path.write_text(config)
        self.log = tmp / f"{name}.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream = upstream
        self.extra_args = extra_args
        self.env = {**os.environ, **CANARY_ENV, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*MIDWAY, "serve", "--port", str(self.port), "--upstream", self.upstream,
                 "--config", str(self.config_path), "--data-dir", str(self.data_dir),
                 *self.extra_args], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: _healthy(self.url) or self.proc is None or
                 self.proc.poll() is not None, timeout=60)
        assert self.proc.poll() is None, self.log.read_text()[-4000:]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def health(self) -> dict[str, Any]:
        return get_json(self.url + "/healthz")  # type: ignore[no-any-return]

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            return resp.read().decode()  # type: ignore[no-any-return]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal midway and wait until it, and every process it started, has exited: after
        a kill -9 the stores are complete only once its audit writer is done."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            return self.proc.returncode
        left = Left(self.proc.pid)  # while its pid is still ours (not reaped)
        try:
            self.proc.send_signal(sig)
            code = self.proc.wait(timeout)
            running = left.wait(timeout)
            assert not running, f"processes of the stopped midway still run: {running}"
        finally:
            left.close()
        return code

    def ensure_stopped(self) -> None:
        """Clean-up: kill midway if it still runs, and what it started if that does not end
        by itself (no writer outlives the test)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        left = Left(self.proc.pid)
        try:
            self.proc.kill()
            self.proc.wait(10)
            if left.wait(60):
                left.kill()
                left.wait(10)
        finally:
            left.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A ``midway`` command on this server's config and data dir."""
        return subprocess.run([*MIDWAY, *args, "--config", str(self.config_path),
                               "--data-dir", str(self.data_dir)], env=self.env,
                              capture_output=True, text=True, timeout=120)


def audit_ids(data_dir: Path) -> Counter[str]:
    """Audit records per midway request id (SQLite store)."""
    with sqlite3.connect(data_dir / "audit.db") as con:
        rows = con.execute("SELECT request_id FROM audit_records ORDER BY seq")
        return Counter(r[0] for r in rows)


def ledger_rows(data_dir: Path) -> list[dict[str, Any]]:
    """Billing ledger rows (SQLite store)."""
    with sqlite3.connect(data_dir / "billing.db") as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM billing_ledger")]
