"""Reading Anthropic's rate-limit response headers.

``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``
(reset in RFC 3339) and ``retry-after`` (seconds, or an HTTP date).
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import datetime

import attrs

LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")


@attrs.define
class Limit:
    """One limit of one key, as last reported."""

    limit: int | None
    remaining: int
    reset: float | None  # epoch seconds


def parse_time(value: str) -> float | None:
    """An RFC 3339 timestamp as epoch seconds."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


# Each limit's header names, spelled once (read on every answer).
_HEADERS = tuple((name, *(f"anthropic-ratelimit-{name}-{part}"
                          for part in ("remaining", "reset", "limit"))) for name in LIMITS)


def read_limits(headers: Mapping[str, str]) -> dict[str, Limit]:
    """The limits a response reports, by name (``requests``, ``tokens``, ...)."""
    found: dict[str, Limit] = {}
    for name, remaining_header, reset_header, limit_header in _HEADERS:
        raw = headers.get(remaining_header)
        if raw is None:  # most answers report none of them (no call to make)
            continue
        remaining = _int(raw)
        if remaining is None:
            continue
        reset_raw = headers.get(reset_header)
        found[name] = Limit(limit=_int(headers.get(limit_header)), remaining=remaining,
                            reset=parse_time(reset_raw) if reset_raw else None)
    return found


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the server asks to wait, from ``retry-after`` (seconds or an HTTP date)."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw.strip()))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def exhausted_until(limits: Mapping[str, Limit], now: float) -> float | None:
    """When the latest exhausted limit resets (``None`` if none is exhausted)."""
    until = None
    for limit in limits.values():
        if limit.remaining <= 0 and limit.reset is not None and limit.reset > now:
            until = limit.reset if until is None else max(until, limit.reset)
    return until
