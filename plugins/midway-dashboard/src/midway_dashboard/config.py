"""The ``[dashboard]`` table (each key also settable as ``MIDWAY_DASHBOARD__<KEY>``)."""

from __future__ import annotations

import attrs

from midway.options import option


@attrs.frozen
class DashboardConfig:
    window_seconds: float = option(
        900.0, gt=0, help="how long the live-traffic window remembers finished requests")
    max_events: int = option(
        100_000, gt=0, help="at most this many requests remembered, whatever the rate")
    refresh_seconds: float = option(2.0, gt=0, help="poll interval of the traffic page")
    session_hours: float = option(12.0, gt=0, help="lifetime of a login session")
