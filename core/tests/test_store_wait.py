"""Start-up and a store it cannot reach yet (``store_wait``): waited for with one log line,
used as soon as it answers; still away after the wait, start-up stops with one line naming the
store, never a traceback. Read commands do not wait."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from midway.config import ConfigError, load_settings
from midway.storage import Schema, StoreUnavailable, StoreURL, open_database, parse_store
from midway.storage.retry import STORE_WAIT
from midway.testing_services import PrivatePostgres, free_port


def _store(url: str) -> StoreURL:
    return parse_store(url, data_dir=Path("/nonexistent"), default_file="x.db",
                       label="[test] store")


SCHEMA = Schema("waited", "CREATE TABLE IF NOT EXISTS waited (id INTEGER PRIMARY KEY)")


class _StartOnFirstRetry(logging.Handler):
    """Starts the store once start-up has said it is waiting for it (in a thread: the
    event loop goes on retrying meanwhile)."""

    def __init__(self, start: object) -> None:
        super().__init__()
        self.start = start
        self.messages: list[str] = []
        self.thread: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if self.thread is None and "retrying for up to" in record.getMessage():
            self.thread = threading.Thread(target=self.start)  # type: ignore[arg-type]
            self.thread.start()


def test_a_postgres_store_started_during_the_wait_is_used(
        private_postgres: PrivatePostgres) -> None:
    private_postgres.stop()
    handler = _StartOnFirstRetry(private_postgres.start)
    logger = logging.getLogger("midway.storage")
    logger.addHandler(handler)

    async def main() -> list[str]:
        STORE_WAIT.set(90)
        db = open_database(_store(private_postgres.dsn), label="[test] store")
        try:
            return await db.open(SCHEMA)
        finally:
            await db.close()

    try:
        changes = asyncio.run(main())
    finally:
        logger.removeHandler(handler)
        if handler.thread is not None:
            handler.thread.join()
    assert any("created table waited" in c for c in changes), changes
    waits = [m for m in handler.messages if "retrying for up to 90 s" in m]
    assert len(waits) == 1, handler.messages  # one line for the whole wait
    assert waits[0].startswith("[test] store: PostgreSQL postgresql://postgres@127.0.0.1:")
    assert "connect call failed" in waits[0] or "connection refused" in waits[0]
    assert any("works again" in m for m in handler.messages), handler.messages


def test_without_a_wait_an_unreachable_store_fails_at_once_in_one_line() -> None:
    port = free_port()

    async def main() -> None:
        db = open_database(_store(f"postgresql://u:secret@127.0.0.1:{port}/db"),
                           label="[test] store")
        await db.open(SCHEMA)

    with pytest.raises(StoreUnavailable) as raised:
        asyncio.run(main())  # STORE_WAIT's default: 0, as for read commands
    message = str(raised.value)
    assert message.startswith(f"[test] store: PostgreSQL postgresql://u:***@127.0.0.1:{port}/db:"
                              " unreachable (")
    assert message.endswith("); check that it is running and reachable at that address "
                            "(`midway config check` tests every store)")
    assert "secret" not in message and "\n" not in message


def _serve(tmp_path: Path, config: str, *args: str, wait: str = "0.3"
           ) -> subprocess.CompletedProcess[str]:
    (tmp_path / "midway.toml").write_text(config)
    env = {**os.environ, "HOME": str(tmp_path), "MIDWAY_STORE_WAIT": wait}
    return subprocess.run(
        [sys.executable, "-m", "midway.cli", "--config", str(tmp_path / "midway.toml"), "serve",
         "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True, text=True, env=env, timeout=60)


def test_serve_stops_in_one_line_when_its_store_stays_away(tmp_path: Path) -> None:
    port = free_port()
    result = _serve(tmp_path, f'[keys]\nenabled = true\nstore = '
                              f'"postgresql://postgres:pw@127.0.0.1:{port}/postgres"\n')
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, result.stderr
    assert error[0].startswith(f"Error: [keys] store: PostgreSQL postgresql://postgres:***@"
                               f"127.0.0.1:{port}/postgres: unreachable for 0.3 s ("), error
    assert error[0].endswith("); check that it is running and reachable at that address "
                             "(`midway config check` tests every store)"), error
    waited = [line for line in result.stderr.splitlines() if "retrying for up to" in line]
    assert len(waited) == 1, result.stderr


def test_a_plugin_that_reaches_its_service_itself_fails_in_one_line(tmp_path: Path) -> None:
    plugin = tmp_path / "reaching.py"
    plugin.write_text(
        "from midway import hookimpl\n\n"
        "@hookimpl\n"
        "async def startup(midway):\n"
        "    raise ConnectionRefusedError(111, 'Connect call failed')\n")
    result = _serve(tmp_path, "", "--plugin", str(plugin))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: plugin reaching failed in startup: something it uses could not be reached "
        "(connect call failed); check that it is running and reachable at the address in "
        "[reaching]"), result.stderr


def test_a_plugin_bug_at_start_up_keeps_its_traceback(tmp_path: Path) -> None:
    plugin = tmp_path / "buggy.py"
    plugin.write_text("from midway import hookimpl\n\n@hookimpl\nasync def startup(midway):\n"
                      "    raise KeyError('a bug')\n")
    result = _serve(tmp_path, "", "--plugin", str(plugin))
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "KeyError: 'a bug'" in result.stderr


def test_store_wait_is_at_most_half_of_hook_timeout(tmp_path: Path) -> None:
    """A wait a plugin's start-up could not finish within its hook_timeout is shortened: the
    one line naming the store comes, not a timeout."""
    port = free_port()
    result = _serve(tmp_path, f'[midway]\nhook_timeout = 1\n[keys]\nenabled = true\nstore = '
                              f'"postgresql://postgres@127.0.0.1:{port}/postgres"\n', wait="10")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"{port}/postgres: unreachable for 0.5 s (" in result.stderr, result.stderr


def test_a_negative_store_wait_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setenv("MIDWAY_STORE_WAIT", "-1")
    with pytest.raises(ConfigError, match=r"^store_wait must be at least 0 \(seconds\), got -1$"):
        load_settings(None, data_dir=str(tmp_path))
