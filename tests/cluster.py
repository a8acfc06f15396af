"""``midway serve`` processes for the multi-instance suites (scale-out, database restarts):
start them on the same config, ask them over HTTP, run the CLI beside them, stop them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import attrs

from midway.secrets_ref import fingerprint
from midway.testing import free_port, wait_for


@attrs.define
class Instance:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def healthy(self) -> bool:
        try:
            return bool(self.get("/healthz")["status"] == "ok")
        except OSError:
            return False

    def key_health(self, secret: str) -> str:
        fp = fingerprint(secret)
        return str(next(r["health"] for r in self.get("/_midway/router/status")
                        if r["key"] == fp))


def midway_cli(config: Path, plugins: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``midway ARGS --config CONFIG`` with only ``plugins`` loaded."""
    env = {**os.environ, "MIDWAY_PLUGINS": plugins}
    return subprocess.run([sys.executable, "-m", "midway.cli", *args, "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=60)


def start_instances(config: Path, upstream: str, tmp_path: Path, plugins: str,
                    workers: tuple[int, ...] = (1, 1, 1), first: int = 0) -> list[Instance]:
    """One ``midway serve`` per entry of ``workers`` (its worker count), each with a data dir
    and a log of its own (``instance<N>.log``, N counted from ``first``), healthy on return."""
    env = {**os.environ, "MIDWAY_PLUGINS": plugins, "MIDWAY_ACCESS_LOG": "false"}
    instances = []
    for i, count in enumerate(workers, first):
        port = free_port()
        log = tmp_path / f"instance{i}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "midway.cli", "serve", "--port", str(port), "--upstream",
             upstream, "--config", str(config), "--data-dir", str(tmp_path / f"data{i}"),
             "--workers", str(count)], env=env, stderr=log.open("wb"))
        instances.append(Instance(port, proc, log))
    for instance in instances:
        try:
            # Three instances, their audit writers and a private PostgreSQL share two cores
            # with the rest of the suite: start-up alone has taken over 20 s under CI's load.
            wait_for(instance.healthy, timeout=60)
        except AssertionError:
            logs = "\n".join(f"--- {i.log.name} (exit {i.proc.poll()}):\n"
                             f"{i.log.read_text(errors='replace')[-3000:]}" for i in instances)
            stop_instances(instances)  # none left running after a failed start
            raise AssertionError(f"instance on port {instance.port} not healthy within 60 s; "
                                 f"their logs:\n{logs}") from None
    return instances


def stop_instances(instances: list[Instance]) -> list[int | None]:
    """SIGTERM to each, then their exit codes (``None``: killed after 30 s)."""
    for instance in instances:
        if instance.proc.poll() is None:
            instance.proc.send_signal(signal.SIGTERM)
    codes = []
    for instance in instances:
        try:
            codes.append(instance.proc.wait(30))
        except subprocess.TimeoutExpired:
            instance.proc.kill()
            codes.append(None)
    return codes
