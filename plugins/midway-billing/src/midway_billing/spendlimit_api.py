"""``/v1/organizations/spend_limits``: spend limits in the shape of Anthropic's Admin API.

Served by midway itself (never forwarded upstream) whenever ``[billing] spend_limits`` is on,
with midway's admin key (``[midway] admin_key``, as ``x-api-key`` or ``Authorization:
Bearer``): typed objects, ``spl_`` ids, amounts as whole-number strings of USD cents,
Anthropic's error envelope and a ``request-id`` header on every answer. Every change is
audited, naming who made it.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from midway import Midway
from midway.access import presents_admin_key
from midway.errors import error_body
from midway.exchange import Principal
from midway.secrets_ref import SecretError, fingerprint, resolve
from midway.storage import is_transient
from midway_billing import spendlimits
from midway_billing.spendlimits import PERIODS, SCOPE_TYPES, SpendLimit, SpendLimitError

if TYPE_CHECKING:
    from midway_billing.plugin import Billing

log = logging.getLogger("midway.billing")
PATH = "/v1/organizations/spend_limits"
MAX_BODY = 64 * 1024


def _answer(data: Any, request_id: str, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json",
                        headers={"request-id": request_id})


def _error(status: int, message: str, request_id: str, kind: str | None = None
           ) -> web.Response:
    return web.Response(status=status, body=error_body(status, message, request_id, kind),
                        content_type="application/json", headers={"request-id": request_id})


def _limit(query: Any, default: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise SpendLimitError("limit: must be between 1 and 1000")
    return int(raw)


class SpendLimitAPI:
    def __init__(self, midway: Midway, billing: Callable[[], Billing | None]) -> None:
        self.midway = midway
        self._billing = billing

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", PATH, self.handle)
        app.router.add_route("*", PATH + "/{rest:.*}", self.handle)

    def _actor(self, request: web.Request) -> str | None:
        """Who calls: ``admin-key:<fingerprint>`` for midway's admin key, else None."""
        if not presents_admin_key(request, self.midway):
            return None
        ref = self.midway.settings.admin_key
        try:
            return f"admin-key:{fingerprint(resolve(ref))}" if ref else None
        except SecretError:
            return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = f"req_{uuid.uuid4().hex}"
        billing = self._billing()
        if billing is None or not billing.config.spend_limits:
            return _error(404, "spend limits are not enabled on this gateway ([billing] "
                          "spend_limits = true)", request_id)
        actor = self._actor(request)
        if actor is None:
            return _error(401, "missing or invalid admin credentials", request_id)
        rest = request.match_info.get("rest")
        method = request.method
        try:
            if rest is None:
                if method == "GET":
                    return _answer(await self.list(billing, request), request_id)
                if method == "POST":
                    return _answer(await self.put(billing, request, actor), request_id)
            elif rest == "effective" and method == "GET":
                return _answer(await self.effective(billing, request), request_id)
            elif rest == "audit" and method == "GET":
                return _answer(await self.audit(billing, request), request_id)
            elif "/" not in rest and rest.startswith("spl_"):
                if method == "GET":
                    await billing.reload_limits()  # one made through another instance
                    return _answer(self._one(billing, rest), request_id)
                if method == "DELETE":
                    return _answer(await self.delete(billing, rest, actor), request_id)
            return _error(404, "not found", request_id)
        except SpendLimitError as exc:
            return _error(exc.status, str(exc), request_id)
        except Exception as exc:
            if not is_transient(exc):
                log.exception("billing: %s %s failed (%s)", method, request.path, request_id)
                return _error(500, "internal error; see the gateway's log", request_id)
            log.warning("billing: %s %s: the store cannot be reached (%s)", method,
                        request.path, exc)
            return _error(503, "the spend store cannot be reached; try again later",
                          request_id, "api_error")

    # -- operations --------------------------------------------------------------------------

    async def list(self, billing: Billing, request: web.Request) -> dict[str, Any]:
        query = request.query
        limit = _limit(query, 20)
        scope_type = query.get("scope_type")
        if scope_type is not None and scope_type not in SCOPE_TYPES:
            raise SpendLimitError("scope_type: must be one of organization, rbac_group, user")
        after, before = query.get("after_id"), query.get("before_id")
        if after is not None and before is not None:
            raise SpendLimitError("after_id and before_id are mutually exclusive")
        await billing.reload_limits()
        rows = sorted(billing.limits.by_scope.values(), key=lambda s: (s.created_at, s.id))
        if scope_type is not None:
            rows = [r for r in rows if r.scope_type == scope_type]
        cursor = after or before
        if cursor is not None:
            ids = [r.id for r in rows]
            if cursor not in ids:
                raise SpendLimitError(f"{'after_id' if after else 'before_id'}: no spend "
                                      "limit with this id")
            at = ids.index(cursor)
            rows = rows[at + 1:] if after else rows[:at]
        if before is not None:
            page, has_more = rows[-limit:], len(rows) > limit
        else:
            page, has_more = rows[:limit], len(rows) > limit
        data = [r.as_dict() for r in page]
        return {"data": data, "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}

    async def put(self, billing: Billing, request: web.Request, actor: str
                  ) -> dict[str, Any]:
        raw = await request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise SpendLimitError("the request body is too large", 413)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise SpendLimitError("invalid JSON body") from None
        scope_type, scope_id, amount, period = spendlimits.parse_request(data)
        now = time.time()
        _, after = await billing.store.put_spend_limit(
            {"id": SpendLimit.new_id(), "scope_type": scope_type, "scope_id": scope_id,
             "period": period, "amount_cents": amount, "created_at": now, "updated_at": now},
            actor, audit_id(now))
        limit = SpendLimit.from_row(after)
        billing.limits.put(limit)
        return limit.as_dict()

    def _one(self, billing: Billing, limit_id: str) -> dict[str, Any]:
        for limit in billing.limits.by_scope.values():
            if limit.id == limit_id:
                return limit.as_dict()
        raise SpendLimitError("spend limit not found", 404)

    async def delete(self, billing: Billing, limit_id: str, actor: str) -> dict[str, Any]:
        now = time.time()
        row = await billing.store.delete_spend_limit(limit_id, actor, audit_id(now), now)
        if row is None:
            raise SpendLimitError("spend limit not found", 404)
        billing.limits.remove(limit_id)
        return {"type": "spend_limit_deleted", "id": limit_id}

    async def effective(self, billing: Billing, request: web.Request) -> dict[str, Any]:
        query = request.query
        limit = _limit(query, 20)
        periods = list(dict.fromkeys(query.getall("period[]", [])))
        if any(p not in PERIODS for p in periods):
            raise SpendLimitError("period[]: must be one of daily, weekly, monthly")
        periods = periods or list(PERIODS)
        users = list(dict.fromkeys(query.getall("user_ids[]", [])))
        if len(users) > 100:
            raise SpendLimitError("user_ids[]: at most 100 entries per request")
        after = None
        if query.get("page") is not None:
            try:
                after = base64.urlsafe_b64decode(query["page"].encode()).decode()
            except (ValueError, UnicodeDecodeError):
                raise SpendLimitError("page: invalid page token") from None
        await billing.reload_limits()
        seen = await billing.store.principals(users or None, after, limit + 1)
        known = {row["principal"]: row for row in seen}
        ids = users or [row["principal"] for row in seen[:limit]]
        next_page = None
        if not users and len(seen) > limit:
            next_page = base64.urlsafe_b64encode(ids[-1].encode()).decode()
        data = await effective_rows(billing, ids, known, periods)
        return {"data": data, "next_page": next_page}

    async def audit(self, billing: Billing, request: web.Request) -> dict[str, Any]:
        query = request.query
        limit = _limit(query, 100)
        after = query.get("after_id")
        if after is not None and not after.isdigit():
            raise SpendLimitError("after_id: must be an audit event id")
        rows = await billing.store.spend_audit(limit + 1, after)
        data = [audit_event(r) for r in rows[:limit]]
        return {"data": data, "has_more": len(rows) > limit}


async def effective_rows(billing: Billing, ids: list[str], known: dict[str, dict[str, Any]],
                         periods: list[str]) -> list[dict[str, Any]]:
    """Each user's effective cap per period: where it comes from, and their spend so far.
    ``known``: the principals billing has seen (their groups), by id."""
    now = time.time()
    data = []
    for uid in ids:
        row = known.get(uid)
        groups = [g for g in (row["groups"] if row else "").split("\x1f") if g]
        principal = Principal(id=uid, name=row["name"] if row else uid,
                              kind=(row["kind"] or "key") if row else "key",
                              subject=row["subject"] if row else None, groups=tuple(groups))
        for period in periods:
            cap = billing.limits.resolve(principal, period, now)
            spent = await billing.store.principal_spend(uid, cap.start)
            data.append({
                "type": "effective_spend_limit", "scope": {"type": "user", "user_id": uid},
                "groups": groups, "amount": None if cap.amount is None else str(cap.amount),
                "currency": "USD", "period": period, "source": cap.source(),
                "spend_limit_id": cap.limit_id,
                "period_to_date_spend": spendlimits.cents_text(spent),
                "resets_at": spendlimits.iso(cap.reset)})
    return data


def audit_event(r: dict[str, Any]) -> dict[str, Any]:
    return {"type": "audit_event", "id": r["id"],
            "created_at": spendlimits.iso(float(r["created_at"])), "actor": r["actor"],
            "action": r["action"], "target_id": r["target_id"],
            "before": _limit_json(r["before_json"]), "after": _limit_json(r["after_json"]),
            "reason": None}


def _limit_json(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    row = orjson.loads(text)
    return SpendLimit.from_row(row).as_dict() if isinstance(row, dict) else None


def audit_id(now: float) -> str:
    """Time-ordered digits: newer events have larger ids (``after_id`` pages back)."""
    return f"{int(now * 1_000_000):017d}{secrets.randbelow(10**6):06d}"
