"""Switching an embedded SQLite store to WAL when several processes open it at once."""

from __future__ import annotations

import sqlite3
import time


def enable_wal(conn: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Put the database in WAL mode, waiting out other processes doing the same.

    ``PRAGMA journal_mode=WAL`` may fail at once with "database is locked" — without going
    through the busy handler — while another process (a sibling worker starting at the same
    moment) holds a lock on a new file. The mode is persistent, so once any process has set it
    the others only need to see it.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)  # a blocking open, run off the event loop by its callers
            delay = min(delay * 2, 0.2)
