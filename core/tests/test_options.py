"""midway.options, midway.timeparse and midway.services: one config loader, one time grammar,
typed service keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import attrs
import pytest

from midway.config import ConfigError, Settings
from midway.context import Midway
from midway.options import (
    byte_size,
    declared,
    load_table,
    option,
    secret,
    store_option,
)
from midway.plugins import PluginHost
from midway.services import ServiceKey
from midway.storage import StoreURL
from midway.timeparse import parse_duration, parse_time


@attrs.frozen
class Echo:
    enabled: bool = option(True, help="answer echo requests")
    ttl: float = option(3600.0, help="how long", converter=parse_duration)
    limit: int = option(10, ge=1, help="at most this many")
    ratio: float = option(0.5, help="a fraction")
    mode: Literal["fast", "safe"] = option("fast", help="how")
    name: str | None = option(None, help="optional name")
    tags: tuple[str, ...] = option((), help="labels")
    headers: dict[str, str] = option({}, help="extra headers")
    token: str | None = option(None, converter=secret, secret=True, help="a credential")
    max_size: int = option(1024, converter=byte_size, help="bytes")
    path: Path | None = option(None, help="a file")


def load(table: dict[str, object], **kw: object) -> Echo:
    return load_table(Echo, "echo", table, **kw)  # type: ignore[arg-type]


def test_defaults_and_coercion() -> None:
    assert load({}) == Echo()
    got = load({"enabled": "no", "ttl": "30m", "limit": "7", "ratio": 1, "mode": "safe",
                "tags": ["a", "b"], "headers": {"x": "y"}, "max_size": "64MiB",
                "path": "~/x.db"})
    assert (got.enabled, got.ttl, got.limit, got.ratio, got.mode) == (False, 1800.0, 7, 1.0,
                                                                       "safe")
    assert (got.tags, got.headers, got.max_size) == (("a", "b"), {"x": "y"}, 64 * 1024 ** 2)
    assert got.path == Path("~/x.db").expanduser()
    assert Echo().headers is not Echo().headers  # a mutable default is per instance


def test_unknown_key_names_file_table_and_nearest_key() -> None:
    with pytest.raises(ConfigError) as info:
        load({"enabeld": True}, source="/etc/midway.toml")
    assert str(info.value) == ("/etc/midway.toml: [echo] enabeld: unknown setting; "
                               "did you mean `enabled`?")
    with pytest.raises(ConfigError, match=r"\[echo\] colour: unknown setting; known settings: "
                                          r"enabled, ttl, "):
        load({"colour": 1})


def test_every_problem_of_a_table_is_reported_one_per_line() -> None:
    with pytest.raises(ConfigError) as info:
        load({"enabeld": True, "limit": 1.5, "ttl": "soon"}, source="midway.toml",
             env={"MIDWAY_ECHO__COLOUR": "red"})
    lines = str(info.value).splitlines()
    assert lines[0] == "midway.toml: [echo] enabeld: unknown setting; did you mean `enabled`?"
    assert lines[1].startswith("MIDWAY_ECHO__COLOUR: [echo] colour: unknown setting; ")
    assert lines[2].startswith("midway.toml: [echo] ttl: expected a duration")
    assert lines[3] == "midway.toml: [echo] limit: expected an integer, got 1.5"
    assert len(lines) == 4


@pytest.mark.parametrize(("table", "message"), [
    ({"limit": 1.5}, "[echo] limit: expected an integer, got 1.5"),
    ({"limit": 0}, "[echo] limit: expected a number >= 1, got 0"),
    ({"enabled": 1}, "[echo] enabled: expected true or false, got 1"),
    ({"mode": "slow"}, "[echo] mode: expected one of 'fast', 'safe', got 'slow'"),
    ({"ttl": "soon"}, "[echo] ttl: expected a duration (seconds or a number with a unit, "
                      "e.g. 90s, 30m, 12h, 7d, 2w), got 'soon'"),
    ({"tags": "a"}, "[echo] tags: expected a list (a string each), got 'a'"),
    ({"tags": [1]}, "[echo] tags: expected a string, got 1"),
    ({"name": 3}, "[echo] name: expected a string, got 3"),
    ({"max_size": "lots"}, "[echo] max_size: expected a size in bytes"),
])
def test_bad_values_are_one_line_naming_table_key_and_expectation(
        table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(table)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_env_overrides_are_coerced_the_same_way() -> None:
    env = {"MIDWAY_ECHO__LIMIT": "3", "MIDWAY_ECHO__ENABLED": "off", "MIDWAY_ECHO__TTL": "2h",
           "MIDWAY_ECHO__TAGS": '["x", "y"]', "MIDWAY_ECHO__HEADERS": '{ a = "b" }',
           "MIDWAY_OTHER__LIMIT": "99"}
    got = load({"limit": 5}, env=env)
    assert (got.limit, got.enabled, got.ttl, got.tags, got.headers) == (
        3, False, 7200.0, ("x", "y"), {"a": "b"})
    with pytest.raises(ConfigError) as info:
        load({}, env={"MIDWAY_ECHO__LIMT": "3"})
    assert str(info.value) == ("MIDWAY_ECHO__LIMT: [echo] limt: unknown setting; "
                               "did you mean `limit`?")
    with pytest.raises(ConfigError, match=r"^MIDWAY_ECHO__LIMIT: \[echo\] limit: expected an "
                                          r"integer, got 'many'$"):
        load({}, env={"MIDWAY_ECHO__LIMIT": "many"})


def test_secrets_resolve_and_never_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDWAY_TEST_ECHO_TOKEN", "sk-hidden")
    assert load({"token": "env:MIDWAY_TEST_ECHO_TOKEN"}).token == "sk-hidden"
    (tmp_path / "t").write_text("sk-file\n")
    assert load({"token": f"file:{tmp_path / 't'}"}).token == "sk-file"
    monkeypatch.delenv("MIDWAY_TEST_ECHO_TOKEN")
    with pytest.raises(ConfigError, match="MIDWAY_TEST_ECHO_TOKEN is not set"):
        load({"token": "env:MIDWAY_TEST_ECHO_TOKEN"})
    with pytest.raises(ConfigError) as info:
        load({"token": ["sk-secret-in-a-list"]})
    assert "sk-secret" not in str(info.value)


@attrs.frozen
class WithStore:
    store: StoreURL = store_option("echo.db", help="where echoes are kept")


def test_store_settings_use_the_one_store_grammar(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def store(table: dict[str, object]) -> StoreURL:
        return load_table(WithStore, "echo", table, data_dir=tmp_path).store

    assert store({}) == StoreURL("sqlite", path=tmp_path / "echo.db")
    assert store({"store": "sub/x.db"}).path == tmp_path / "sub" / "x.db"
    monkeypatch.setenv("MIDWAY_TEST_ECHO_DSN", "postgresql://u:pw@db/x")
    found = store({"store": "env:MIDWAY_TEST_ECHO_DSN"})
    assert (found.kind, found.masked) == ("postgresql", "postgresql://u:***@db/x")
    with pytest.raises(ConfigError) as info:
        load_table(WithStore, "echo", {"store": "postgress"}, data_dir=tmp_path,
                   source="m.toml")
    assert str(info.value).startswith("m.toml: [echo] store: 'postgress' is not a store; use")


def test_post_init_checks_are_config_errors_with_the_source() -> None:
    @attrs.frozen
    class Pair:
        low: int = option(0, help="low")
        high: int = option(1, help="high")

        def __attrs_post_init__(self) -> None:
            if self.low > self.high:
                raise ConfigError("[pair] low must not exceed high")

    with pytest.raises(ConfigError, match=r"^f.toml: \[pair\] low must not exceed high$"):
        load_table(Pair, "pair", {"low": 5}, source="f.toml")


def test_declared_lists_every_setting_with_its_help() -> None:
    infos = {i.key: i for i in declared(Echo)}
    assert list(infos)[:3] == ["enabled", "ttl", "limit"]
    assert infos["headers"].default == {} and infos["limit"].help == "at most this many"
    assert infos["mode"].type == "one of 'fast', 'safe'"


def test_midway_options_reads_the_file_and_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=tmp_path, config_path=tmp_path / "midway.toml")
    settings.tables = {"echo": {"limit": 4, "tags": ["t"]}}
    monkeypatch.setenv("MIDWAY_ECHO__RATIO", "0.25")
    got = Midway(settings, PluginHost()).options("echo", Echo)
    assert (got.limit, got.tags, got.ratio) == (4, ("t",), 0.25)
    settings.tables = {"echo": {"limti": 4}}
    with pytest.raises(ConfigError, match=r"midway.toml: \[echo\] limti: unknown setting; "
                                          r"did you mean `limit`\?"):
        settings.options("echo", Echo)


def test_parse_time_forms_and_naive_means_utc() -> None:
    utc_noon = datetime(2026, 11, 1, 12, tzinfo=UTC).timestamp()
    assert parse_time("2026-11-01T12:00:00") == utc_noon
    assert parse_time("2026-11-01T12:00:00Z") == utc_noon
    assert parse_time("2026-11-01T14:00:00+02:00") == utc_noon
    assert parse_time("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    assert parse_time(datetime(2026, 11, 1, 12)) == utc_noon
    plus2 = datetime(2026, 11, 1, 14, tzinfo=timezone(timedelta(hours=2)))
    assert parse_time(plus2) == utc_noon
    assert parse_time("1700000000") == parse_time(1_700_000_000) == 1_700_000_000.0
    assert parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("7d", now=1e6) == 1e6 - 7 * 86400
    assert parse_time(None) is None and parse_time("") is None
    with pytest.raises(ConfigError, match="expected a time"):
        parse_time("next week")


def test_parse_duration() -> None:
    assert [parse_duration(v) for v in (90, "90", "90s", "1.5m", "2h", "7d", "2w")] == [
        90, 90, 90, 90, 7200, 7 * 86400, 14 * 86400]
    for bad in ("soon", -1, True, "5y", "9" * 400, 10 ** 400, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="expected a duration") as info:
            parse_duration(bad)
        assert len(str(info.value)) < 160  # a huge value is not echoed whole


def test_parse_time_refuses_what_no_timestamp_holds() -> None:
    for bad in ("nan", "inf", float("nan"), 10 ** 400):
        with pytest.raises(ConfigError, match="expected a time"):
            parse_time(bad)
    with pytest.raises(ConfigError, match="expected a duration"):  # "that long ago"
        parse_time("9" * 400 + "d")
    # Out-of-range dates are still instants; callers bound them (keys: 1970 to 9999).
    assert parse_time("0001-01-01T00:00:00") == datetime(1, 1, 1, tzinfo=UTC).timestamp()


class Thing:
    pass


THING: ServiceKey[Thing] = ServiceKey("thing")


def test_service_keys_are_their_names(tmp_path: Path) -> None:
    midway = Midway(Settings(data_dir=tmp_path), PluginHost())
    thing = Thing()
    midway.services[THING] = thing
    assert midway.services.get(THING) is thing
    assert midway.services["thing"] is thing  # plugins that look up by name keep working
    midway.services["other"] = 1
    assert midway.services.pop(THING, None) is thing
    assert midway.services.get(THING) is None and "thing" not in midway.services
