"""Spend limits as Anthropic's own gateway has them (docs/billing.md, "Spend limits").

A spend limit caps one person's spend — the principal: a signed-in person or an API key — per
UTC calendar period (daily, weekly from Monday, monthly). Limits are set per user, per group
(a default for each member, not a pool) and for the organisation; a person's effective cap in
a period is their own limit, else the most restrictive of their groups' (``group_limit_mode``
"min"; "max": the most generous), else the organisation's, else none. Each period is enforced
on its own.

A cap is one more limited bucket of billing's reservations (``principal`` scope, the
period's window): admission, stream growth and settlement are the budgets' own, so
concurrent requests never spend past a cap. This module resolves the caps, and says what a
client is told: the ``anthropic-ratelimit-unified-*`` headers Claude Code reads, and the
``billing_error`` refusal.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import orjson

from midway import Exchange, Response
from midway.exchange import Principal
from midway_billing.budgets import Bucket

PERIODS = ("daily", "weekly", "monthly")
SCOPE_TYPES = ("user", "rbac_group", "organization")
# The budgets' window names for each spend-limit period (budgets.window).
WINDOW = {"daily": "day", "weekly": "week", "monthly": "month"}
PUSD_PER_CENT = 10**10
# Claude Code warns past these fractions (its own gateway's thresholds, highest first).
THRESHOLDS = (0.95, 0.75)
HEADER_PREFIX = "anthropic-ratelimit-unified-"
_CENTS = re.compile(r"^\d{1,18}$")


class SpendLimitError(ValueError):
    """A request about spend limits that cannot be honoured (``status``: what to answer)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def period_window(period: str, now: float) -> tuple[float, float]:
    """Start and reset (unix seconds) of ``period``'s UTC calendar window holding ``now``:
    days from midnight, weeks from Monday midnight, months from the 1st."""
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        start, end = day, day + timedelta(days=1)
    elif period == "weekly":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif period == "monthly":
        start = day.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else \
            start.replace(month=start.month + 1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return start.timestamp(), end.timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@attrs.frozen
class SpendLimit:
    """One limit: a scope's cap per period, in whole USD cents (``None``: no cap there)."""

    id: str
    scope_type: str  # user | rbac_group | organization
    scope_id: str  # the user id or group name; "" for the organisation
    amount: int | None
    period: str
    created_at: float
    updated_at: float
    created_by: str = ""

    @staticmethod
    def new_id() -> str:
        return f"spl_{uuid.uuid4().hex}"

    def scope(self) -> dict[str, Any]:
        return scope_object(self.scope_type, self.scope_id)

    def as_dict(self) -> dict[str, Any]:
        return {"type": "spend_limit", "id": self.id, "created_at": iso(self.created_at),
                "updated_at": iso(self.updated_at), "scope": self.scope(),
                "amount": None if self.amount is None else str(self.amount),
                "currency": "USD", "period": self.period}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SpendLimit:
        amount = row["amount_cents"]
        return cls(id=str(row["id"]), scope_type=str(row["scope_type"]),
                   scope_id=str(row["scope_id"]), amount=None if amount is None else int(amount),
                   period=str(row["period"]), created_at=float(row["created_at"]),
                   updated_at=float(row["updated_at"]), created_by=str(row["created_by"] or ""))


def scope_object(scope_type: str, scope_id: str) -> dict[str, Any]:
    if scope_type == "user":
        return {"type": "user", "user_id": scope_id}
    if scope_type == "rbac_group":
        return {"type": "rbac_group", "rbac_group_id": scope_id}
    return {"type": "organization"}


def parse_request(data: Any) -> tuple[str, str, int | None, str]:
    """``POST /v1/organizations/spend_limits``'s body: scope type and id, amount, period."""
    if not isinstance(data, dict):
        raise SpendLimitError("the request body must be a JSON object")
    unknown = sorted(set(data) - {"scope", "amount", "period", "currency"})
    if unknown:
        raise SpendLimitError(f"{unknown[0]}: Extra inputs are not permitted")
    scope = data.get("scope")
    if not isinstance(scope, dict):
        raise SpendLimitError("scope: Required (an object with type user, rbac_group or "
                              "organization)")
    kind = scope.get("type")
    fields = {"user": "user_id", "rbac_group": "rbac_group_id", "organization": None}
    if kind not in fields:
        raise SpendLimitError("scope.type: must be one of user, rbac_group, organization")
    field = fields[kind]
    allowed = {"type"} | ({field} if field else set())
    extra = sorted(set(scope) - allowed)
    if extra:
        raise SpendLimitError(f"scope.{extra[0]}: Extra inputs are not permitted")
    scope_id = ""
    if field is not None:
        value = scope.get(field)
        if not isinstance(value, str) or not value or len(value) > 256 or \
                not value.isprintable():
            raise SpendLimitError(f"scope.{field}: Required (1 to 256 printable characters)")
        scope_id = value
    if data.get("currency", "USD") != "USD":
        raise SpendLimitError("currency: must be USD")
    if "amount" not in data:
        raise SpendLimitError("amount: Required (a whole-number string of USD cents, or null)")
    amount = data["amount"]
    if amount is not None and (not isinstance(amount, str) or not _CENTS.match(amount)):
        raise SpendLimitError("amount: must be a whole-number decimal string of cents")
    period = data.get("period", "monthly")
    if period not in PERIODS:
        raise SpendLimitError("period: must be one of daily, weekly, monthly")
    return str(kind), scope_id, None if amount is None else int(amount), str(period)


def user_ids(principal: Principal) -> list[str]:
    """The ids a ``user`` limit may name this principal by: its id, and a signed-in person's
    subject (never a name or e-mail, which a key's creator chooses)."""
    ids = [principal.id]
    if principal.kind == "oidc" and principal.subject and principal.subject not in ids:
        ids.append(principal.subject)
    return ids


@attrs.frozen
class Cap:
    """A person's effective cap in one period, and where it came from."""

    period: str
    amount: int | None  # cents; None: unlimited
    scope_type: str | None  # the limit's scope (None: no limit applies)
    scope_id: str | None
    limit_id: str | None
    start: float
    reset: float

    @property
    def limit_pusd(self) -> int | None:
        return None if self.amount is None else self.amount * PUSD_PER_CENT

    def bucket(self, principal_id: str) -> Bucket:
        return Bucket("principal", principal_id, WINDOW[self.period], self.start)

    def source(self) -> dict[str, Any] | None:
        if self.scope_type is None or self.scope_id is None:
            return None
        return scope_object(self.scope_type, self.scope_id)


class LimitTable:
    """The limits in force, by (scope type, scope id, period)."""

    def __init__(self, limits: Iterable[SpendLimit] = (), group_mode: str = "min") -> None:
        self.group_mode = group_mode
        self.by_scope: dict[tuple[str, str, str], SpendLimit] = {}
        for limit in limits:
            self.by_scope[(limit.scope_type, limit.scope_id, limit.period)] = limit

    def __bool__(self) -> bool:
        return bool(self.by_scope)

    def put(self, limit: SpendLimit) -> None:
        self.by_scope[(limit.scope_type, limit.scope_id, limit.period)] = limit

    def remove(self, limit_id: str) -> None:
        for key, limit in list(self.by_scope.items()):
            if limit.id == limit_id:
                del self.by_scope[key]

    def resolve(self, principal: Principal, period: str, now: float) -> Cap:
        """``principal``'s cap in ``period``: their own limit, else their groups' (the most
        restrictive, or the most generous with ``group_mode`` "max"; equal amounts: the
        group whose name sorts first), else the organisation's, else none."""
        start, reset = period_window(period, now)
        for uid in user_ids(principal):
            own = self.by_scope.get(("user", uid, period))
            if own is not None:
                return Cap(period, own.amount, "user", uid, own.id, start, reset)
        groups = [lim for g in sorted(set(principal.groups))
                  if (lim := self.by_scope.get(("rbac_group", g, period))) is not None]
        if groups:
            def size(lim: SpendLimit) -> float:
                return math.inf if lim.amount is None else lim.amount
            pick = groups[0]  # groups are in name order: equal amounts keep the first
            for lim in groups[1:]:
                if (size(lim) < size(pick)) if self.group_mode == "min" else \
                        (size(lim) > size(pick)):
                    pick = lim
            return Cap(period, pick.amount, "rbac_group", pick.scope_id, pick.id, start, reset)
        org = self.by_scope.get(("organization", "", period))
        if org is not None:
            return Cap(period, org.amount, "organization", "", org.id, start, reset)
        return Cap(period, None, None, None, None, start, reset)

    def caps(self, principal: Principal, now: float) -> list[Cap]:
        """The periods in which ``principal`` has a cap (an amount, not unlimited)."""
        caps = [self.resolve(principal, period, now) for period in PERIODS]
        return [cap for cap in caps if cap.amount is not None]


@attrs.frozen
class Standing:
    """A cap and what was spent against it, as the headers report it."""

    cap: Cap
    spent_pusd: int

    @property
    def exceeded(self) -> bool:
        limit = self.cap.limit_pusd
        return limit is not None and self.spent_pusd >= limit

    @property
    def utilization(self) -> float:
        limit = self.cap.limit_pusd
        if not limit:
            return 1.0
        return self.spent_pusd / limit


def binding(standings: list[Standing]) -> Standing | None:
    """The cap to report: an exceeded one (the latest to reset), else the most used."""
    best: Standing | None = None
    for s in standings:
        if best is None:
            best = s
        elif s.exceeded != best.exceeded:
            best = s if s.exceeded else best
        elif s.exceeded:
            best = s if s.cap.reset > best.cap.reset else best
        elif s.utilization > best.utilization:
            best = s
    return best


def reported_utilization(standing: Standing) -> float:
    value = round(standing.utilization * 100) / 100
    return value if standing.exceeded else min(value, 0.99)


def unified_headers(standing: Standing, now: float, rejected: bool = False
                    ) -> dict[str, str]:
    """The ``anthropic-ratelimit-unified-*`` headers Claude Code reads for a gateway's spend
    limit (its "overage" claim): status, reset, utilization and the warning threshold passed;
    on a refusal also the period and why."""
    exceeded = rejected or standing.exceeded
    reset = str(math.floor(standing.cap.reset))
    threshold = next((t for t in THRESHOLDS if standing.utilization > t), None)
    status = "rejected" if exceeded else "allowed_warning" if threshold else "allowed"
    utilization = reported_utilization(standing)
    if rejected:
        utilization = max(utilization, 1.0) if standing.exceeded else utilization
    headers = {HEADER_PREFIX + "status": status, HEADER_PREFIX + "reset": reset,
               HEADER_PREFIX + "overage-reset": reset,
               HEADER_PREFIX + "overage-utilization": f"{utilization:g}"}
    if threshold is not None:
        headers[HEADER_PREFIX + "overage-surpassed-threshold"] = f"{threshold:g}"
    if exceeded:
        headers[HEADER_PREFIX + "overage-period"] = standing.cap.period
        headers[HEADER_PREFIX + "overage-disabled-reason"] = "org_spend_cap_reached"
        headers["retry-after"] = str(max(1, math.ceil(standing.cap.reset - now)))
    else:
        headers[HEADER_PREFIX + "representative-claim"] = "overage"
        headers[HEADER_PREFIX + "overage-status"] = status
    return headers


def refusal_message(cap: Cap) -> str:
    reset = datetime.fromtimestamp(cap.reset, UTC)
    return (f"spend limit reached ({cap.period}; resets {reset:%Y-%m-%d %H:%M} UTC)")


def refusal(exchange: Exchange, standing: Standing, now: float) -> Response:
    """429 ``billing_error``: a cap would be passed by this request."""
    headers = unified_headers(standing, now, rejected=True)
    headers["x-should-retry"] = "false"
    return Response(status=429, body=error_payload(refusal_message(standing.cap), exchange.id),
                    headers=headers)


def unavailable(exchange: Exchange) -> Response:
    """429 ``billing_error`` when the store cannot say what a person may spend and
    ``spend_limits_on_store_error`` is "closed"."""
    return Response(status=429, body=error_payload(
        "spend limit unavailable: the spend store cannot be reached, and this gateway refuses "
        "requests it cannot meter (see `midway billing spend-limits`)", exchange.id),
        headers={"x-should-retry": "false",
                 HEADER_PREFIX + "overage-disabled-reason": "fetch_error"})


def error_payload(message: str, request_id: str | None) -> bytes:
    payload: dict[str, Any] = {"type": "error",
                               "error": {"type": "billing_error", "message": message}}
    if request_id:
        payload["request_id"] = request_id
    return orjson.dumps(payload)


def cents_text(pusd: int) -> str:
    """Picodollars as a decimal string of cents (exact, trailing zeros trimmed)."""
    whole, rest = divmod(pusd, PUSD_PER_CENT)
    if not rest:
        return str(whole)
    return f"{whole}.{rest:010d}".rstrip("0")


def cents_floor(pusd: int) -> int:
    return pusd // PUSD_PER_CENT


def severity(standing: Standing) -> str:
    if standing.exceeded or standing.utilization > THRESHOLDS[0]:
        return "critical"
    return "warning" if standing.utilization > THRESHOLDS[1] else "normal"


def usage_body(standings: list[Standing], spent: Mapping[str, int]) -> dict[str, Any]:
    """``GET /api/oauth/usage``'s answer, in the shape Claude Code's ``/usage`` reads from a
    gateway (its **Spend limit** bar): with caps, the binding cap's limit, spend and
    utilization (``extra_usage``) and one entry per capped period (``limits``); without,
    the person's spend today, this week and this month (``monthly_limit``: null), which
    Claude Code shows as "Spend (UTC)". ``spent``: picodollars per period."""
    if not standings:
        return {"extra_usage": {
            "is_enabled": True, "monthly_limit": None,
            "used_credits": cents_floor(spent.get("monthly", 0)), "utilization": None,
            "currency": "USD",
            "daily": {"limit": None, "used_credits": cents_floor(spent.get("daily", 0)),
                      "utilization": None},
            "weekly": {"limit": None, "used_credits": cents_floor(spent.get("weekly", 0)),
                       "utilization": None}},
            "limits": []}
    active = binding(standings)
    assert active is not None
    assert active.cap.amount is not None
    return {"extra_usage": {
        "is_enabled": True, "monthly_limit": active.cap.amount,
        "used_credits": cents_floor(active.spent_pusd),
        "utilization": round(reported_utilization(active) * 100), "currency": "USD"},
        "limits": [{"kind": "spend", "group": s.cap.period,
                    "percent": round(reported_utilization(s) * 100),
                    "resets_at": iso(s.cap.reset), "severity": severity(s),
                    "is_active": s is active} for s in standings]}
