"""``midway claude [ARGS…]``: Claude Code through midway in one command; ``midway stop``.

``midway claude`` uses the midway already listening on the configured port (it asks
``/healthz`` whether that is midway), or starts one in the background on the configured
settings, then replaces itself with the ``claude`` CLI, its environment set so that Claude
Code talks to midway and to nothing else. The instance it started keeps running for the next
session; its pid is kept in ``<data dir>/launcher.pid`` and ``midway stop`` stops it — only
that one, never a process it did not start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from midway.config import ConfigError, Settings
from midway.datadir import prepare
from midway.preflight import port_problem

PID_FILE = "launcher.pid"
LOG_FILE = "midway.log"
START_TIMEOUT = 60.0  # seconds for a background midway to answer /healthz
CLAUDE_ENV = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}  # no side calls past midway


def base_url(settings: Settings) -> str:
    """Where a client on this machine reaches the instance of ``settings``."""
    host = settings.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (a wildcard is reached on loopback)
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def is_midway(url: str) -> bool:
    """Whether a midway answers at ``url`` (its ``/healthz`` reply, not just any server)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: direct
    try:
        with opener.open(f"{url}/healthz", timeout=2) as response:
            health = json.loads(response.read())
    except (OSError, ValueError):
        return False
    return isinstance(health, dict) and health.get("status") == "ok" and \
        "version" in health and "open_streams" in health


def ensure_running(settings: Settings) -> tuple[str, bool]:
    """The URL of a running midway on the configured port, and whether this call started it.

    :raises ConfigError: the port is taken by something else, or midway did not start (the
        message quotes its error line and names its log).
    """
    url = base_url(settings)
    if is_midway(url):
        return url, False
    taken = port_problem(settings)
    if taken is not None:
        raise ConfigError(f"{taken.split(';')[0]}, and what listens there is not midway; "
                          "pass --port N to `midway` (or set MIDWAY_PORT)")
    data_dir = prepare(settings.data_dir)
    log_path = data_dir / LOG_FILE
    offset = log_path.stat().st_size if log_path.exists() else 0  # earlier runs' lines
    argv = [sys.executable, "-m", "midway.cli", "serve", "--data-dir", str(data_dir),
            "--host", settings.host, "--port", str(settings.port)]
    if settings.config_path is not None:
        argv += ["--config", str(settings.config_path)]
    with log_path.open("ab") as log:
        # A session of its own: Ctrl-C in Claude Code does not stop it.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    _write_pid(data_dir, proc.pid, settings)
    deadline = time.monotonic() + START_TIMEOUT
    while not is_midway(url):
        if proc.poll() is not None:
            _pid_path(data_dir).unlink(missing_ok=True)
            raise ConfigError(f"midway did not start: {_last_error(log_path, offset)} "
                              f"(log: {log_path})")
        if time.monotonic() > deadline:
            proc.terminate()
            _pid_path(data_dir).unlink(missing_ok=True)
            raise ConfigError(f"midway did not answer on {url} within {START_TIMEOUT:g} s "
                              f"(log: {log_path})")
        time.sleep(0.1)
    return url, True


def claude_env(url: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Claude Code's environment: midway's URL, no non-essential traffic, one credential.

    A key in ``ANTHROPIC_API_KEY`` is handed over as ``ANTHROPIC_AUTH_TOKEN`` (what the
    README's setup uses: Claude Code then neither asks about it nor sends a second credential);
    without either, Claude Code uses its own login, through midway too.
    """
    env = dict(environ)
    env["ANTHROPIC_BASE_URL"] = url
    env.update(CLAUDE_ENV)
    api_key = env.pop("ANTHROPIC_API_KEY", None)
    if api_key and not env.get("ANTHROPIC_AUTH_TOKEN"):
        env["ANTHROPIC_AUTH_TOKEN"] = api_key
    return env


def find_claude(environ: Mapping[str, str]) -> str:
    found = shutil.which("claude", path=environ.get("PATH"))
    if found is None:
        raise ConfigError("the `claude` command is not on PATH: install Claude Code "
                          "(npm install -g @anthropic-ai/claude-code) and try again")
    return found


def launch(settings: Settings, args: list[str]) -> None:
    """Make sure midway runs, then become ``claude ARGS`` (never returns on success)."""
    claude = find_claude(os.environ)
    url, started = ensure_running(settings)
    note = "started in the background; `midway stop` stops it" if started else "already running"
    print(f"midway on {url} ({note}); data dir {settings.data_dir}", file=sys.stderr)
    env = claude_env(url, os.environ)
    sys.stderr.flush()
    os.execve(claude, [claude, *args], env)  # noqa: S606 (no shell: ARGS pass as they are)


def stop(settings: Settings) -> str:
    """Stop the background midway ``midway claude`` started with these settings' data dir.

    :return: what was done, in words.
    :raises ConfigError: there is none to stop, or it would not stop.
    """
    path = _pid_path(settings.data_dir)
    record = _read_pid(path)
    if record is None:
        running = " (the midway running there was not started by `midway claude`: stop it " \
            "where it runs)" if is_midway(base_url(settings)) else ""
        raise ConfigError(f"no midway started by `midway claude` with data dir "
                          f"{settings.data_dir}{running}")
    pid = int(record["pid"])
    if not _is_our_server(pid):
        path.unlink(missing_ok=True)
        return f"the midway started by `midway claude` (pid {pid}) is no longer running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_timeout + 10
    while _is_our_server(pid):
        if time.monotonic() > deadline:
            raise ConfigError(f"midway (pid {pid}) did not stop within "
                              f"{settings.shutdown_timeout + 10:g} s; it may still be "
                              "finishing streams")
        time.sleep(0.1)
    path.unlink(missing_ok=True)
    return f"stopped midway (pid {pid}) on port {record.get('port')}"


def _pid_path(data_dir: Path) -> Path:
    return data_dir / PID_FILE


def _write_pid(data_dir: Path, pid: int, settings: Settings) -> None:
    _pid_path(data_dir).write_text(json.dumps({"pid": pid, "host": settings.host,
                                               "port": settings.port}))


def _read_pid(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def _is_our_server(pid: int) -> bool:
    """Whether ``pid`` is alive and is a ``midway … serve`` process: a pid file can outlive
    its process, and the number can be reused by another."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours
        return False
    try:
        command = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                                 text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "midway" in command and " serve" in command


def _last_error(log_path: Path, offset: int) -> str:
    try:
        with log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "no log"
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    return (errors or lines or ["no output"])[-1]
