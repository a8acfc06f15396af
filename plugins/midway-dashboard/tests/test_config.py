"""The [dashboard] table and `midway config check`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import midway_dashboard
from midway.config import Settings
from midway.context import Midway
from midway.plugins import PluginHost
from midway.testing import RunningMidway
from midway_dashboard.config import DashboardConfig, DashboardConfigError, load_config


def test_defaults_and_overrides() -> None:
    assert load_config({}) == DashboardConfig()
    config = load_config({"window_seconds": 60, "max_events": "500", "refresh_seconds": 0.5})
    assert (config.window_seconds, config.max_events, config.refresh_seconds) == (60.0, 500, 0.5)


@pytest.mark.parametrize(("table", "message"), [
    ({"refresh": 5}, "unknown setting 'refresh'"),
    ({"window_seconds": "long"}, "must be a number"),
    ({"max_events": 0}, "positive"),
    ({"session_hours": True}, "positive"),
])
def test_bad_settings_are_named(table: dict[str, object], message: str) -> None:
    with pytest.raises(DashboardConfigError, match=message):
        load_config(table)


def test_config_check_reports_table_and_admin_key(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIDWAY_TEST_DASHBOARD_NOPE", raising=False)
    settings = Settings(data_dir=tmp_path, admin_key="env:MIDWAY_TEST_DASHBOARD_NOPE")
    settings.tables = {"dashboard": {"colour": "blue"}}
    problems = midway_dashboard.config_check(Midway(settings, PluginHost()))
    assert len(problems) == 2
    assert "unknown setting 'colour'" in problems[0]
    assert problems[1] == "admin_key: environment variable MIDWAY_TEST_DASHBOARD_NOPE is not set"
    settings.tables, settings.admin_key = {"dashboard": {"window_seconds": 60}}, None
    assert midway_dashboard.config_check(Midway(settings, PluginHost())) == []


def test_a_bad_table_stops_start_up(start_dashboard: Callable[..., RunningMidway]) -> None:
    with pytest.raises(Exception, match="dashboard"):
        start_dashboard(config={"dashboard": {"refresh": 5}})


def test_the_window_follows_the_config(start_dashboard: Callable[..., RunningMidway]) -> None:
    running = start_dashboard(config={"dashboard": {"window_seconds": 120, "max_events": 3}})
    window = running.midway.services["dashboard"].window
    assert window.window_seconds == 120 and window.events.maxlen == 3
