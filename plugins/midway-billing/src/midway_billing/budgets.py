"""Budgets from config, the spending windows they count in, and which apply to a request."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from midway_billing.pricing import PriceError, to_decimal, to_pusd

SCOPES = ("principal", "team", "project", "group", "all")
PERIODS = ("day", "week", "month", "total")


@attrs.frozen
class Attribution:
    """Who a request's cost goes to."""

    principal: str
    principal_name: str
    team: str | None
    project: str | None
    # The keys the principal was derived from, nearest first: their budgets cover it too.
    ancestors: tuple[str, ...] = ()
    # The principal's groups (from its credential): a group budget counts each of them.
    groups: tuple[str, ...] = ()

    def value(self, scope: str) -> str | None:
        if scope == "all":
            return "*"
        return {"principal": self.principal, "team": self.team,
                "project": self.project}.get(scope)

    def values(self, scope: str) -> list[str]:
        """Every value of ``scope`` a request counts for: a principal scope counts for the
        principal and each key it descends from."""
        if scope == "principal":
            return [self.principal, *self.ancestors]
        if scope == "group":
            return list(self.groups)
        value = self.value(scope)
        return [] if value is None else [value]


@attrs.frozen
class Budget:
    """``[[billing.budgets]]``: a USD limit on a scope's spend per period."""

    name: str
    scope: str  # principal | team | project | group | all
    match: str  # one value of the scope, or "*" for each value separately
    period: str  # day | week | month | total
    limit_pusd: int
    hard: bool
    warn_at: float  # fraction of the limit from which a warning is given

    def applies(self, who: Attribution) -> list[str]:
        """The scope values this budget counts ``who``'s spend in (none: it does not apply)."""
        return [v for v in who.values(self.scope) if self.match in ("*", v)]


@attrs.frozen
class Bucket:
    """One counter: a scope value's spend in one window of one period."""

    scope: str
    value: str
    period: str
    start: float  # unix seconds; 0 for "total"
    # its counter's key, formatted once: every request's reservation reads it
    key: str = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(
            self, "key", f"{self.scope}\x1f{self.value}\x1f{self.period}\x1f{int(self.start)}")

    @classmethod
    def from_key(cls, key: str) -> Bucket:
        scope, value, period, start = key.split("\x1f")
        return cls(scope, value, period, float(start))


def window(period: str, now: float) -> tuple[float, float | None]:
    """Start and reset time (unix seconds, UTC) of the window holding ``now``."""
    if period == "total":
        return 0.0, None
    # Every window starts and ends at a UTC midnight: the same for the whole day.
    return _window(period, int(now // 86400))


@functools.lru_cache(maxsize=64)
def _window(period: str, day: int) -> tuple[float, float]:
    moment = datetime.fromtimestamp(day * 86400, UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 86400
    if period == "week":  # from Monday 00:00 UTC (spend limits' weekly period)
        midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        start_ts = midnight.timestamp() - 86400 * midnight.weekday()
        return start_ts, start_ts + 7 * 86400
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else \
        start.replace(month=start.month + 1)
    return start.timestamp(), nxt.timestamp()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def parse_budgets(entries: Any) -> list[Budget]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise PriceError("[[billing.budgets]] must be an array of tables")
    budgets = []
    for i, entry in enumerate(entries):
        where = f"billing budget #{i + 1}"
        if not isinstance(entry, Mapping):
            raise PriceError(f"{where} must be a table")
        scope = str(entry.get("scope", "team"))
        period = str(entry.get("period", "month"))
        mode = str(entry.get("mode", "hard"))
        if scope not in SCOPES:
            raise PriceError(f"{where}: scope must be one of {', '.join(SCOPES)}")
        if period not in PERIODS:
            raise PriceError(f"{where}: period must be one of {', '.join(PERIODS)}")
        if mode not in ("hard", "soft"):
            raise PriceError(f"{where}: mode must be 'hard' or 'soft'")
        if "limit_usd" not in entry:
            raise PriceError(f"{where}: limit_usd is required")
        match = str(entry.get("match", "*"))
        warn_at = float(entry.get("warn_at", 0.8 if mode == "hard" else 1.0))
        name = str(entry.get("name") or f"{scope}:{match} {period}")
        budgets.append(Budget(name=name, scope=scope, match=match, period=period,
                              limit_pusd=to_pusd(to_decimal(entry["limit_usd"], where)),
                              hard=mode == "hard", warn_at=warn_at))
    return budgets


@attrs.frozen
class Check:
    """A budget applied to one request: its bucket, limit and reset time."""

    budget: Budget
    bucket: Bucket
    reset: float | None


def checks_for(budgets: list[Budget], who: Attribution, now: float) -> list[Check]:
    out = []
    for budget in budgets:
        start, reset = window(budget.period, now)
        for value in budget.applies(who):
            out.append(Check(budget, Bucket(budget.scope, value, budget.period, start), reset))
    return out
