"""A command whose store's database is down says so in one line, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner

from midway.cli import settings_options


@click.command()
@settings_options
def verify_things(settings: Any) -> None:
    # what asyncpg raises when the database's host does not resolve or refuses
    raise ConnectionRefusedError(111, "Connect call failed ('10.0.0.9', 5432)")


@click.command()
@settings_options
def broken(settings: Any) -> None:
    raise KeyError("a bug")


def test_an_unreachable_store_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(verify_things, ["--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: verify things: a store could not be reached (")
    assert "10.0.0.9" in lines[0] and "run the command again" in lines[0]


def test_a_bug_is_not_dressed_up_as_an_outage(tmp_path: Path) -> None:
    result = CliRunner().invoke(broken, ["--data-dir", str(tmp_path)])
    assert isinstance(result.exception, KeyError)
