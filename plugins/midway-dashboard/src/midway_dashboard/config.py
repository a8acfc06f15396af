"""The ``[dashboard]`` table (each key also settable as ``MIDWAY_DASHBOARD__<KEY>``)."""

from __future__ import annotations

import attrs

from midway.options import option, store_option
from midway.storage import StoreURL


@attrs.frozen
class DashboardConfig:
    window_seconds: float = option(
        900.0, gt=0, help="how long the live-traffic window remembers finished requests")
    max_events: int = option(
        100_000, gt=0, help="at most this many requests remembered, whatever the rate")
    refresh_seconds: float = option(2.0, gt=0, help="poll interval of the traffic page")
    session_hours: float = option(12.0, gt=0, help="lifetime of a login session")
    free_attempts: int = option(
        10, gt=0, help="wrong admin keys per minute from one address answered at once; past "
                       "that its attempts are spaced out (the right key still logs in)")
    attempt_spacing: float = option(
        1.0, gt=0, help="seconds between evaluated attempts of an address past free_attempts")
    attempt_max_wait: float = option(
        15.0, gt=0, help="an attempt that would wait longer for its turn is refused (429) "
                         "unevaluated")
    store: StoreURL = store_option(
        "dashboard.db", help="where login sessions live (SQLite in the data dir, or a "
                             "postgresql:// URL shared by several hosts)")
