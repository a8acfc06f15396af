"""``midway config check`` (and serve) import the plugin files a config file names: running as
root, a file a non-root user could have written is refused, never executed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from midway.cli import cli
from midway.plugins import import_risk

pytestmark = pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() != 0,
                                reason="the refusal applies to root; these tests run as root")

PLUGIN = """
from pathlib import Path
Path({marker!r}).write_text("ran as root")
"""


def plant(directory: Path, marker: Path) -> Path:
    directory.mkdir(exist_ok=True)
    plugin = directory / "planted.py"
    plugin.write_text(PLUGIN.format(marker=str(marker)))
    return plugin


def check(tmp_path: Path, plugin: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    config = tmp_path / "midway.toml"
    config.write_text(f'[midway]\nplugins = []\nextra_plugins = ["{plugin}"]\n')
    monkeypatch.delenv("MIDWAY_PLUGINS", raising=False)
    result = CliRunner().invoke(cli, ["config", "check", "--config", str(config),
                                      "--data-dir", str(tmp_path / "data")])
    return result.output


def test_a_world_writable_directory_is_not_imported_from(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    marker = tmp_path / "marker"
    plugin = plant(shared, marker)
    shared.chmod(0o777)
    output = check(tmp_path, plugin, monkeypatch)
    assert not marker.exists(), "the planted plugin ran"
    assert "refusing to import" in output and "writable by others (mode 0777)" in output, output


def test_a_file_owned_by_another_user_is_not_imported(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    plugin = plant(tmp_path / "own", marker)
    os.chown(plugin, 1000, 1000)
    output = check(tmp_path, plugin, monkeypatch)
    assert not marker.exists()
    assert "owned by uid 1000" in output, output


def test_a_root_only_path_is_imported(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    plugin = plant(tmp_path / "root-only", marker)
    assert import_risk(plugin) is None  # /tmp is world-writable but sticky
    check(tmp_path, plugin, monkeypatch)
    assert marker.read_text() == "ran as root"
