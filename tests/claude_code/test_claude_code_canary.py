"""The canary's own parts (cc_canary.py, the conftest hooks): which Claude Code version a run
tests, including when npm cannot be reached, and the compatibility matrix it writes. No
Claude Code run here: npm itself, against a fake registry or none."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cc_canary
import pytest
from aiohttp import web
from cc_support import CLAUDE_CODE_VERSION, COST

from midway.testing import ServerThread, free_port

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


class FakeRegistry(ServerThread):
    """An npm registry serving Claude Code's packument with ``latest`` as its newest
    release."""

    def __init__(self, latest: str) -> None:
        self.latest = latest
        self.asked: list[str] = []
        app = web.Application()
        app.router.add_get("/{name:.+}", self._packument)
        super().__init__(app)

    async def _packument(self, request: web.Request) -> web.Response:
        self.asked.append(request.path)
        if request.match_info["name"].replace("%2f", "/").replace("%2F", "/") != \
                cc_canary.PACKAGE:
            return web.json_response({"error": "Not found"}, status=404)
        versions = {v: {"name": cc_canary.PACKAGE, "version": v,
                        "dist": {"tarball": f"{self.url}/claude-code-{v}.tgz",
                                 "shasum": "0" * 40}}
                    for v in (CLAUDE_CODE_VERSION, self.latest)}
        return web.json_response({"name": cc_canary.PACKAGE, "versions": versions,
                                  "dist-tags": {"latest": self.latest},
                                  "time": {v: "2026-12-01T00:00:00.000Z" for v in versions}})


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    server = FakeRegistry("9.8.7")
    server.start()
    yield server
    server.stop()


def npm_env(registry: str, home: Path) -> dict[str, str]:
    """npm pointed at ``registry``, with a fresh cache (nothing answered from an old one)."""
    return {**os.environ, "npm_config_registry": registry, "npm_config_cache": str(home / "npm"),
            "HOME": str(home)}


def test_latest_is_what_the_registry_says(registry: FakeRegistry, tmp_path: Path) -> None:
    resolved = cc_canary.resolve("latest", "2.1.331", env=npm_env(f"{registry.url}/", tmp_path))
    assert resolved == cc_canary.Resolved("latest", "9.8.7", "2.1.331", None)
    assert registry.asked  # npm asked this registry, not another


def test_pinned_and_explicit_versions_ask_no_one(tmp_path: Path) -> None:
    env = npm_env("http://127.0.0.1:9/", tmp_path)
    assert cc_canary.resolve("pinned", "2.1.331", env=env) == \
        cc_canary.Resolved("pinned", "2.1.331", "2.1.331")
    assert cc_canary.resolve(" 2.1.400 ", "2.1.331", env=env).version == "2.1.400"
    for bad in ("newest", "2.1", "2.1.331; rm -rf /", ""):
        with pytest.raises(cc_canary.VersionError, match="expected pinned, latest or a version"):
            cc_canary.resolve(bad, "2.1.331")


def test_unreachable_npm_falls_back_to_the_pinned_version(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    started = time.monotonic()
    resolved = cc_canary.resolve("latest", "2.1.331", env=npm_env(closed, tmp_path))
    assert time.monotonic() - started < cc_canary.NPM_TIMEOUT
    assert (resolved.requested, resolved.version, resolved.pinned) == \
        ("latest", "2.1.331", "2.1.331")
    assert resolved.note is not None
    assert resolved.note.startswith("npm is unreachable (")
    assert "ECONNREFUSED" in resolved.note
    assert resolved.note.endswith("testing the cached pinned version 2.1.331 instead")


def test_a_registry_that_never_answers_is_given_up_on_in_time(tmp_path: Path) -> None:
    # A registry that accepts the connection and then says nothing (a black-holing proxy).
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        started = time.monotonic()
        resolved = cc_canary.resolve("latest", "2.1.331", timeout=2,
                                     env=npm_env(f"http://127.0.0.1:{port}/", tmp_path))
        elapsed = time.monotonic() - started
    assert elapsed < 10
    assert resolved.version == "2.1.331" and resolved.note is not None
    assert "npm is unreachable" in resolved.note


def test_no_npm_at_all_falls_back_too(tmp_path: Path) -> None:
    resolved = cc_canary.resolve("latest", "2.1.331", env={"PATH": str(tmp_path)})
    assert resolved.version == "2.1.331"
    assert resolved.note == ("npm is unreachable (npm is not on PATH): testing the cached "
                             "pinned version 2.1.331 instead")


def run(version: str, cells: dict[str, dict[str, list[str]]], note: str | None = None,
        requested: str = "latest", collected: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"requested": requested, "version": version, "pinned": "2.1.331", "note": note,
            "quick": False, "date": "2026-12-06 03:00 UTC", "cells": cells,
            "collected": sorted(set(collected) | set(cells))}


def table_row(text: str, feature: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.startswith(f"| {feature} |")]
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_the_matrix_shows_each_cell_per_version() -> None:
    outcomes = cc_canary.Outcomes()
    outcomes.collect([("tool loop", "bedrock", "anthropic"), ("errors", "vertex", "vertex"),
                      ("otel", "anthropic", "anthropic")])
    outcomes.add([("text turn", "anthropic", "anthropic"), ("streaming", "anthropic",
                                                            "anthropic")], "t.py::a", "passed")
    outcomes.add([("text turn", "anthropic", "vertex")], "t.py::b", "passed")
    outcomes.add([("text turn", "anthropic", "vertex")], "t.py::c", "failed")  # one fails
    outcomes.add([("cache replay", "anthropic", "anthropic")], "t.py::d", "passed")
    outcomes.add([("errors", "vertex", "vertex")], "t.py::e", "skipped")
    resolved = cc_canary.Resolved("latest", "2.1.332", "2.1.331")
    latest = outcomes.as_json(resolved)
    pinned = run("2.1.331", {}, requested="pinned")
    text = cc_canary.render([pinned, latest])

    assert "## Claude Code 2.1.331 (pinned)" in text
    assert "## Claude Code 2.1.332 (latest)" in text
    assert text.index("2.1.331 (pinned)") < text.index("2.1.332 (latest)")
    # columns: the eight format → upstream cells, in CELLS' order
    header = next(line for line in text.splitlines() if line.startswith("| feature |"))
    assert header.count("|") == len(cc_canary.CELLS) + 2
    assert "Bedrock → Anthropic" in header and "Anthropic → OpenAI-compatible" in header
    latest_text = text[text.index("2.1.332 (latest)"):]
    row = table_row(latest_text, "text turn")
    assert row[cc_canary.CELLS.index(("anthropic", "anthropic"))] == "✅ pass"
    assert row[cc_canary.CELLS.index(("anthropic", "vertex"))] == "❌ fail"
    assert row[cc_canary.CELLS.index(("bedrock", "bedrock"))] == "· not covered"
    loop = table_row(latest_text, "tool loop")
    assert loop[cc_canary.CELLS.index(("bedrock", "anthropic"))] == "○ not run"
    errors = table_row(latest_text, "errors")  # skipped only: nothing was tried
    assert errors[cc_canary.CELLS.index(("vertex", "vertex"))] == "○ not run"
    thinking = table_row(latest_text, "signed thinking")
    assert thinking[cc_canary.CELLS.index(("anthropic", "openai"))] == "n/a"
    # core features first, in order; then the others
    features = [line.split("|")[1].strip() for line in latest_text.splitlines()
                if line.startswith("| ") and not line.startswith("| feature")]
    assert features[:len(cc_canary.CORE_FEATURES)] == list(cc_canary.CORE_FEATURES)
    assert "cache replay" in features
    assert table_row(latest_text, "otel")[0] == "○ not run"  # collected, not selected
    assert "- `t.py::c`" in latest_text and "- `t.py::b`" not in latest_text
    assert "3 cells pass, 1 fail, 3 not run" in latest_text


def test_the_matrix_says_when_latest_was_not_tested() -> None:
    note = "npm is unreachable (ECONNREFUSED): testing the cached pinned version 2.1.331 instead"
    text = cc_canary.render([run("2.1.331", {}, note=note)])
    assert f"**Note:** {note}." in text
    assert "## Claude Code 2.1.331 (pinned, tested in place of the latest)" in text
    assert "the same as the pinned" not in text  # npm's latest is unknown, not the pinned
    same = cc_canary.render([run("2.1.331", {})])
    assert "## Claude Code 2.1.331 (latest, the same as the pinned)" in same


def test_a_failed_set_up_fails_the_cell() -> None:
    outcomes = cc_canary.Outcomes()
    key = ("errors", "bedrock", "bedrock")
    outcomes.add([key], "t.py::a", "failed")  # its fixture broke; the body never ran
    entry = outcomes.cells[cc_canary.cell_key(*key)]
    assert cc_canary.verdict(entry, key) == "fail"


def test_cells_of_a_marker() -> None:
    assert cc_canary.cells_of({"feature": ("a", "b"), "format": "vertex",
                               "upstream": "bedrock"}) == [("a", "vertex", "bedrock"),
                                                           ("b", "vertex", "bedrock")]
    with pytest.raises(ValueError, match="unknown format 'azure'"):
        cc_canary.cells_of({"feature": "a", "format": "azure", "upstream": "anthropic"})
    assert COST in cc_canary.CORE_FEATURES


def pytest_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, **(env or {})})


def test_every_cell_has_a_test_of_each_core_feature(tmp_path: Path, cc_collected: set[str]
                                                    ) -> None:
    collected = cc_collected
    if cc_canary.cell_key("text turn", "vertex", "anthropic") not in collected:
        # this session did not collect the whole suite: a session that does
        out = tmp_path / "collected.json"
        proc = pytest_run(str(HERE), "--collect-only", "-m", "cc_cell", "--cc-matrix-json",
                          str(out))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        collected = set(json.loads(out.read_text())["collected"])
    missing = [(feature, fmt, upstream) for fmt, upstream in cc_canary.CELLS
               for feature in cc_canary.CORE_FEATURES
               if (feature, fmt, upstream) not in cc_canary.NOT_APPLICABLE
               and cc_canary.cell_key(feature, fmt, upstream) not in collected]
    assert missing == []


def test_a_run_with_npm_unreachable_says_so_and_records_it(tmp_path: Path) -> None:
    """``--claude-code-version latest`` with npm pointed at nothing: one line says the pinned
    version is tested instead, and the run's matrix records it (a cell test that needs no
    CLI: count_tokens)."""
    out = tmp_path / "run.json"
    test = "test_claude_code_matrix.py::test_count_tokens_in_the_client_format[anthropic-to-vertex]"
    proc = pytest_run(f"{HERE / test}", "--claude-code-version", "latest",
                      "--cc-matrix-json", str(out),
                      env={"npm_config_registry": f"http://127.0.0.1:{free_port()}/",
                           "npm_config_cache": str(tmp_path / "npm")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if "npm is unreachable" in line]
    assert len(said) == 1 and said[0].startswith("[claude-code] npm is unreachable (")
    assert f"testing the cached pinned version {CLAUDE_CODE_VERSION} instead" in said[0]
    result = json.loads(out.read_text())
    assert (result["requested"], result["version"]) == ("latest", CLAUDE_CODE_VERSION)
    assert "npm is unreachable" in result["note"]
    assert result["cells"] == {"count_tokens|anthropic|vertex": {
        "passed": [f"tests/claude_code/{test}"], "failed": [], "skipped": []}}
    assert f"Claude Code {CLAUDE_CODE_VERSION} tested (--claude-code-version latest); npm is " \
        "unreachable" in proc.stdout
