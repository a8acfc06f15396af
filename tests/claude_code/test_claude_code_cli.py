"""The setup a person follows: `midway serve` with every installed plugin, Claude Code pointed at
it, then midway's own commands to see what the session did."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cc_support import MARKER, Claude, tool_loop_replies

from midway.testing import FakeUpstream, free_port, wait_for


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def served(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``midway serve`` as a subprocess (all installed plugins), its URL and data dir."""
    data_dir = tmp_path / "served"
    port = free_port()
    config = tmp_path / "midway.toml"
    config.write_text(f'[midway]\nupstream = "{fake_upstream.url}"\nport = {port}\n')
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "midway.cli", "serve", "--config",
                               str(config), "--data-dir", str(data_dir)],
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url) or server.poll() is not None, timeout=60)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        yield url, data_dir
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def _midway(data_dir: Path, *args: str) -> Any:
    proc = subprocess.run([sys.executable, "-m", "midway.cli", "--data-dir", str(data_dir),
                           *args, "--json"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.cc_cell(feature="midway serve and its commands", format="anthropic",
                     upstream="anthropic")
def test_midway_serve_and_its_commands(claude: Claude, served: tuple[str, Path],
                                       fake_upstream: FakeUpstream) -> None:
    url, data_dir = served
    plugins = _midway(data_dir, "plugins")
    loaded = {p["name"] for p in plugins if not p.get("error")}
    assert {"audit", "billing", "cache", "router"} <= loaded, plugins

    fake_upstream.reply(*tool_loop_replies())
    out = claude.run(url, "Print the marker", "--allowedTools", "Bash(echo:*)",
                     "--model", "claude-sonnet-4-6").assert_success()
    assert out["result"] == f"The command printed {MARKER}."

    def records() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = _midway(data_dir, "audit", "query")
        return found

    wait_for(lambda: len(records()) >= 2, timeout=60)
    audited = records()
    assert len(audited) == 2
    assert {r["stop_reason"] for r in audited} == {"tool_use", "end_turn"}
    [row] = _midway(data_dir, "billing", "report", "--by", "model")
    assert row["model"] == "claude-sonnet-4-6"
    assert abs(Decimal(row["cost_usd"]) - Decimal(str(out["total_cost_usd"]))) < \
        Decimal("1e-9")
    stats = _midway(data_dir, "cache", "stats")
    # on its defaults the installed cache answers and stores nothing (caching is opt-in)
    assert stats["entries"] == 0
    assert stats["hits"] == 0
