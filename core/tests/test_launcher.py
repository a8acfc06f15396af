"""``midway claude`` and ``midway stop`` as a person runs them, with a fake ``claude`` on PATH
that records what it was given: midway started in the background (or the running one used),
Claude Code's environment, ARGS passed through, and a stop that only ever stops what
``midway claude`` started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from midway.launcher import PID_FILE, claude_env, is_midway
from midway.testing import free_port, wait_for

FAKE_CLAUDE = """#!{python}
import json, os, sys
with open(os.environ["FAKE_CLAUDE_OUT"], "w") as out:
    json.dump({{"argv": sys.argv[1:], "env": dict(os.environ)}}, out)
"""


@pytest.fixture
def fake_claude(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "claude"
    script.write_text(FAKE_CLAUDE.format(python=sys.executable))
    script.chmod(0o755)
    return bin_dir


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    # Whatever a failed test left running in the background is stopped by its pid file.
    pid_file = path / PID_FILE
    if pid_file.exists():
        pid = json.loads(pid_file.read_text())["pid"]
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def midway(data_dir: Path, port: int, *args: str, path: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL")}
    environ.update({"MIDWAY_PLUGINS": "", "MIDWAY_PORT": str(port), **(env or {})})
    if path is not None:
        environ["PATH"] = f"{path}{os.pathsep}{environ.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", "midway.cli", "--data-dir", str(data_dir),
                           *args], env=environ, capture_output=True, text=True, timeout=90)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "State:\tZ" not in status.read_text()


def test_claude_starts_midway_runs_claude_and_stop_stops_it(tmp_path, fake_claude, data_dir):
    port = free_port()
    out = tmp_path / "claude.json"
    result = midway(data_dir, port, "claude", "-p", "hello there", "--model", "x",
                    path=fake_claude, env={"FAKE_CLAUDE_OUT": str(out),
                                           "ANTHROPIC_API_KEY": "sk-ant-personal"})
    assert result.returncode == 0, result.stderr
    assert f"midway on http://127.0.0.1:{port} (started in the background" in result.stderr
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["-p", "hello there", "--model", "x"]  # passed through as given
    env = seen["env"]
    assert env["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["ANTHROPIC_AUTH_TOKEN"] == "sk-ant-personal" and "ANTHROPIC_API_KEY" not in env
    # midway keeps running in the background for the next session.
    url = f"http://127.0.0.1:{port}"
    assert is_midway(url)
    pid = json.loads((data_dir / PID_FILE).read_text())["pid"]
    # A second run uses it rather than starting another.
    again = midway(data_dir, port, "claude", "-p", "again", path=fake_claude,
                   env={"FAKE_CLAUDE_OUT": str(out)})
    assert again.returncode == 0 and "(already running)" in again.stderr, again.stderr
    assert json.loads((data_dir / PID_FILE).read_text())["pid"] == pid
    stopped = midway(data_dir, port, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"stopped midway (pid {pid}) on port {port}"
    assert not is_midway(url) and not pid_alive(pid)
    assert not (data_dir / PID_FILE).exists()
    # Nothing left to stop: said in one line, non-zero.
    nothing = midway(data_dir, port, "stop")
    assert nothing.returncode == 1
    assert nothing.stderr.strip() == (f"Error: no midway started by `midway claude` with data "
                                      f"dir {data_dir}")


def test_a_running_midway_is_used_and_never_stopped(tmp_path, fake_claude, data_dir):
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "midway.cli", "serve", "--port", str(port),
                               "--data-dir", str(tmp_path / "other")],
                              env={**os.environ, "MIDWAY_PLUGINS": ""}, stderr=log)
    try:
        wait_for(lambda: is_midway(f"http://127.0.0.1:{port}"), timeout=30)
        out = tmp_path / "claude.json"
        result = midway(data_dir, port, "claude", path=fake_claude,
                        env={"FAKE_CLAUDE_OUT": str(out)})
        assert result.returncode == 0 and "(already running)" in result.stderr, result.stderr
        assert json.loads(out.read_text())["env"]["ANTHROPIC_BASE_URL"] == \
            f"http://127.0.0.1:{port}"
        assert not (data_dir / PID_FILE).exists()
        refused = midway(data_dir, port, "stop")
        assert refused.returncode == 1
        assert "was not started by `midway claude`" in refused.stderr
        assert server.poll() is None  # still serving
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()


def test_a_stale_pid_file_never_kills_another_process(tmp_path, data_dir):
    # The pid file names a live process that is not midway (this test's sleeper).
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        data_dir.mkdir()
        (data_dir / PID_FILE).write_text(json.dumps({"pid": sleeper.pid, "port": 1}))
        result = midway(data_dir, free_port(), "stop")
        assert result.returncode == 0
        assert "is no longer running" in result.stdout
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_port_taken_by_something_else_is_one_line(tmp_path, fake_claude, data_dir):
    port = free_port()
    other = socket.socket()
    try:
        other.bind(("127.0.0.1", port))
        other.listen()
        result = midway(data_dir, port, "claude", path=fake_claude,
                        env={"FAKE_CLAUDE_OUT": str(tmp_path / "x.json")})
    finally:
        other.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: port {port} on 127.0.0.1 is in use (another midway? `midway status --port "
        f"{port}`), and what listens there is not midway; pass --port N to `midway` (or set "
        "MIDWAY_PORT)"]
    assert not (tmp_path / "x.json").exists()


def test_midway_that_cannot_start_says_why(tmp_path, fake_claude, data_dir):
    config = tmp_path / "midway.toml"
    config.write_text('[midway]\nadmin_key = "env:MIDWAY_TEST_UNSET_ADMIN"\n')
    result = midway(data_dir, free_port(), "--config", str(config), "claude", path=fake_claude,
                    env={"FAKE_CLAUDE_OUT": str(tmp_path / "x.json")})
    assert result.returncode == 1
    assert "Error: midway did not start: Error: " in result.stderr
    assert "MIDWAY_TEST_UNSET_ADMIN is not set" in result.stderr
    assert not (data_dir / PID_FILE).exists()


def test_no_claude_on_path_is_one_line(tmp_path, data_dir):
    result = midway(data_dir, free_port(), "claude", env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "the `claude` command is not on PATH: install Claude Code" in result.stderr
    assert not data_dir.exists()  # nothing started


def test_claude_env_keeps_an_auth_token_and_sets_the_rest():
    env = claude_env("http://127.0.0.1:1", {"ANTHROPIC_AUTH_TOKEN": "mw-team-key",
                                            "ANTHROPIC_API_KEY": "sk-ant-other", "X": "y"})
    assert env == {"ANTHROPIC_AUTH_TOKEN": "mw-team-key", "X": "y",
                   "ANTHROPIC_BASE_URL": "http://127.0.0.1:1",
                   "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
