"""``midway claude`` with the real Claude Code CLI: one command starts midway in the background
and runs Claude Code through it; ``midway stop`` stops that midway."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cc_support import AUTH_TOKEN, MARKER, ClaudeRun, tool_loop_replies

from midway.launcher import PID_FILE, is_midway
from midway.testing import FakeUpstream, free_port, wait_for


@pytest.mark.cc_cell(feature="midway claude launcher", format="anthropic", upstream="anthropic")
def test_midway_claude_runs_claude_code_through_a_background_midway(
        claude_binary: Path, fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    config = tmp_path / "midway.toml"
    config.write_text(f'[midway]\nupstream = "{fake_upstream.url}"\nport = {port}\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "claude").symlink_to(claude_binary)
    home = tmp_path / "home"
    (home / "tmp").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    # What a person's shell has: a personal key, Claude Code on PATH; no ANTHROPIC_BASE_URL.
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": str(home), "TMPDIR": str(home / "tmp"), "LANG": "C.UTF-8", "TERM": "dumb",
           "DISABLE_AUTOUPDATER": "1", "ANTHROPIC_API_KEY": AUTH_TOKEN}
    fake_upstream.reply(*tool_loop_replies())
    argv = [sys.executable, "-m", "midway.cli", "--config", str(config), "--data-dir",
            str(data_dir), "claude", "-p", "Print the marker", "--output-format", "json",
            "--allowedTools", "Bash(echo:*)", "--model", "claude-sonnet-4-6"]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True,
                              timeout=180, check=False)
        run = ClaudeRun(args=argv, returncode=proc.returncode, stdout=proc.stdout,
                        stderr=proc.stderr, seconds=time.monotonic() - started, home=home)
        out = run.assert_success()
        assert out["result"] == f"The command printed {MARKER}."
        assert f"midway on http://127.0.0.1:{port} (started in the background" in proc.stderr
        # Both turns went through midway, with the key as the bearer credential.
        messages = fake_upstream.messages_requests
        assert len(messages) == 2
        assert all(r.headers.get("authorization") == f"Bearer {AUTH_TOKEN}" for r in messages)
        # Access lines reach the log within 0.1 s (midway.accesslog buffers them).
        log_file = data_dir / "midway.log"
        wait_for(lambda: log_file.read_text().count("path=/v1/messages") >= 2, timeout=10)
        assert is_midway(f"http://127.0.0.1:{port}")  # kept for the next session
    finally:
        stopped = subprocess.run([sys.executable, "-m", "midway.cli", "--config", str(config),
                                  "--data-dir", str(data_dir), "stop"], capture_output=True,
                                 text=True, timeout=60, check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("stopped midway (pid "), stopped.stdout
    assert not (data_dir / PID_FILE).exists()
    assert not is_midway(f"http://127.0.0.1:{port}")
