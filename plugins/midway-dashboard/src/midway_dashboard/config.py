"""The ``[dashboard]`` table (each key also settable as ``MIDWAY_DASHBOARD__<KEY>``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


class DashboardConfigError(ValueError):
    """A ``[dashboard]`` setting midway cannot use; the message names it."""


@attrs.define(frozen=True)
class DashboardConfig:
    window_seconds: float = 900.0  # how long the live-traffic window remembers requests
    max_events: int = 100_000  # upper bound of remembered requests, whatever the rate
    refresh_seconds: float = 2.0  # how often the traffic page polls
    session_hours: float = 12.0  # lifetime of a login session


def load_config(table: Mapping[str, Any]) -> DashboardConfig:
    """Build the config; unknown keys and non-positive numbers are errors (typos fail loudly)."""
    fields = {f.name: f for f in attrs.fields(DashboardConfig)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        field = fields.get(key)
        if field is None:
            raise DashboardConfigError(f"[dashboard] unknown setting {key!r}; known: "
                                       f"{', '.join(fields)}")
        kind = int if field.type in (int, "int") else float
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise DashboardConfigError(
                f"[dashboard] {key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or number <= 0:
            raise DashboardConfigError(f"[dashboard] {key} must be a positive number")
        values[key] = number
    return DashboardConfig(**values)
