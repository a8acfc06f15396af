"""The [dashboard] table and `midway config check`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

import midway_dashboard
from midway.config import ConfigError, Settings
from midway.context import Midway
from midway.options import load_table
from midway.plugins import PluginHost
from midway.testing import RunningMidway
from midway_dashboard import DASHBOARD
from midway_dashboard.config import DashboardConfig


def load_config(table: dict[str, object]) -> DashboardConfig:
    return load_table(DashboardConfig, "dashboard", table, data_dir=Path("/data"))


def test_defaults_and_overrides() -> None:
    defaults = load_config({})
    assert defaults.store.path == Path("/data/dashboard.db")
    assert defaults == DashboardConfig(store=defaults.store)
    config = load_config({"window_seconds": 60, "max_events": "500", "refresh_seconds": 0.5})
    assert (config.window_seconds, config.max_events, config.refresh_seconds) == (60.0, 500, 0.5)


@pytest.mark.parametrize(("table", "message"), [
    ({"refresh": 5}, "[dashboard] refresh: unknown setting; did you mean `refresh_seconds`?"),
    ({"window_seconds": "long"}, "[dashboard] window_seconds: expected a number, got 'long'"),
    ({"max_events": 0}, "[dashboard] max_events: expected a number > 0, got 0"),
    ({"session_hours": True}, "[dashboard] session_hours: expected a number, got True"),
])
def test_bad_settings_are_named(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(table)
    assert str(info.value) == message


def test_config_check_reports_table_and_admin_key(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIDWAY_TEST_DASHBOARD_NOPE", raising=False)
    settings = Settings(data_dir=tmp_path, admin_key="env:MIDWAY_TEST_DASHBOARD_NOPE")
    settings.tables = {"dashboard": {"colour": "blue"}}
    problems = asyncio.run(midway_dashboard.config_check(Midway(settings, PluginHost())))
    assert len(problems) == 2
    assert problems[0].startswith("[dashboard] colour: unknown setting; known settings: "
                                  "window_seconds, max_events, refresh_seconds, session_hours")
    assert problems[1] == "admin_key: environment variable MIDWAY_TEST_DASHBOARD_NOPE is not set"
    settings.tables, settings.admin_key = {"dashboard": {"window_seconds": 60}}, None
    assert asyncio.run(midway_dashboard.config_check(Midway(settings, PluginHost()))) == []


def test_a_bad_table_stops_start_up(start_dashboard: Callable[..., RunningMidway]) -> None:
    with pytest.raises(Exception, match="dashboard"):
        start_dashboard(config={"dashboard": {"refresh": 5}})


def test_the_window_follows_the_config(start_dashboard: Callable[..., RunningMidway]) -> None:
    running = start_dashboard(config={"dashboard": {"window_seconds": 120, "max_events": 3}})
    window = running.midway.services[DASHBOARD].window
    assert window.window_seconds == 120 and window.max_events == 3
