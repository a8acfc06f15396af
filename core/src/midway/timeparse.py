"""Durations and instants as people write them in config and on the command line.

One grammar for every plugin: a duration is seconds (``90``, ``1.5``) or a number with a unit
(``90s``, ``30m``, ``12h``, ``7d``, ``2w``); an instant is an ISO 8601 date or date-time, unix
seconds, or a duration meaning "that long ago". A timestamp without a zone means UTC.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

from midway.config import ConfigError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION_FORMS = "seconds or a number with a unit, e.g. 90s, 30m, 12h, 7d, 2w"
TIME_FORMS = "an ISO date or date-time, unix seconds, or e.g. 15m, 2h, 7d ago"


def parse_duration(value: object) -> float:
    """Seconds in ``value``: a non-negative number, or text like ``"90s"``, ``"30m"``, ``"7d"``.

    :raises ConfigError: saying which forms are accepted (also for an infinite or overflowing
        value: ``"9" * 400``, ``1e400``).
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = _finite(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip().lower())
        if match is not None:
            seconds = _finite(float(match.group(1)) * _UNITS[match.group(2)])
    if seconds is not None and seconds >= 0:
        return seconds
    raise ConfigError(f"expected a duration ({DURATION_FORMS}), got {_shown(value)}")


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit up to days that divides it (``7d``, ``90m``, ``45s``),
    the form :func:`parse_duration` reads back."""
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_optional_duration(value: object) -> float | None:
    """Like :func:`parse_duration`, but ``None``, ``""`` and ``0`` mean "off" (``None``)."""
    if value is None or value == "" or value == 0:
        return None
    return parse_duration(value)


def parse_time(value: object, *, now: float | None = None) -> float | None:
    """Unix seconds of an instant; ``None`` or ``""`` give ``None`` (no bound).

    Accepts a :class:`~datetime.datetime`, unix seconds (number or text), an ISO 8601 date
    (``2026-11-01``) or date-time (``2026-11-01T12:00:00Z``, ``…+02:00``), or a duration meaning
    that long before ``now`` (``"15m"``, ``"2h"``, ``"7d"``). Naive dates and times are UTC.

    :raises ConfigError: naming the accepted forms.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return _timestamp(value, value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _instant(_finite(value), value)
    if not isinstance(value, str):
        raise ConfigError(f"expected a time ({TIME_FORMS}), got {_shown(value)}")
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:  # "nan" and "inf" too: refused by _instant
        return _instant(_finite(number), value)
    match = _DURATION.fullmatch(text.lower())
    if match is not None and match.group(2):
        return (time.time() if now is None else now) - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(f"expected a time ({TIME_FORMS}), got {_shown(text)}") from None
    return _timestamp(moment, value)


def _timestamp(moment: datetime, value: object) -> float:
    """Unix seconds of ``moment`` (naive: UTC); one past what a timestamp holds is an error."""
    try:
        return (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment).timestamp()
    except (OverflowError, ValueError):
        raise ConfigError(f"expected a time ({TIME_FORMS}), got {_shown(value)}") from None


def _instant(seconds: float | None, value: object) -> float:
    if seconds is None:
        raise ConfigError(f"expected a time ({TIME_FORMS}), got {_shown(value)}")
    return seconds


def _finite(number: float) -> float | None:
    """``number`` as a float, or None when it is not finite (or too large for a float)."""
    try:
        result = float(number)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def _shown(value: object) -> str:
    return repr(value)[:60]
