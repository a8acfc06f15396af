"""A fake of Anthropic's Usage & Cost Admin API, as documented: ``x-api-key`` must be the
admin key, buckets are UTC days between ``starting_at`` and ``ending_at``, ``group_by[]``
decides which fields are set (the others are null), and ``limit`` buckets come per page with
``has_more`` / ``next_page``."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from aiohttp import web

from midway.testing import ServerThread

USAGE_FIELDS = ("uncached_input_tokens", "output_tokens", "cache_read_input_tokens",
                "ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens",
                "web_search_requests")


@attrs.define
class FakeAdmin:
    admin_key: str
    # (day "YYYY-MM-DD", model, api_key_id) → usage counts named as USAGE_FIELDS
    usage: dict[tuple[str, str, str], dict[str, int]] = attrs.field(factory=dict)
    # (day, model or None, cost_type, token_type or None, amount in cents as a string)
    costs: list[tuple[str, str | None, str, str | None, str]] = attrs.field(factory=list)
    page_size: int = 1  # buckets per page at most, whatever ``limit`` asks: pages are tested
    calls: list[dict[str, Any]] = attrs.field(factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/organizations/usage_report/messages", self._usage)
        app.router.add_get("/v1/organizations/cost_report", self._cost)
        return app

    def _check(self, request: web.Request) -> web.Response | None:
        self.calls.append({"path": request.path, "query": list(request.query.items()),
                           "key_ok": request.headers.get("x-api-key") == self.admin_key})
        if request.headers.get("x-api-key") != self.admin_key:
            return web.json_response({"type": "error", "error": {
                "type": "authentication_error", "message": "invalid x-api-key"}}, status=401)
        if "anthropic-version" not in request.headers:
            return web.json_response({"type": "error", "error": {
                "type": "invalid_request_error",
                "message": "anthropic-version: header is required"}}, status=400)
        return None

    def _days(self, request: web.Request) -> list[datetime] | web.Response:
        try:
            start = _parse(request.query["starting_at"])
            end = _parse(request.query["ending_at"]) if "ending_at" in request.query \
                else start + timedelta(days=7)
        except (KeyError, ValueError):
            return web.json_response({"type": "error", "error": {
                "type": "invalid_request_error", "message": "starting_at: invalid"}},
                status=400)
        if request.query.get("bucket_width", "1d") != "1d":
            return web.json_response({"type": "error", "error": {
                "type": "invalid_request_error", "message": "bucket_width: only 1d here"}},
                status=400)
        day = start.replace(hour=0, minute=0, second=0, microsecond=0)
        days = []
        while day < end:
            days.append(day)
            day += timedelta(days=1)
        return days

    def _page(self, request: web.Request, buckets: list[dict[str, Any]]) -> web.Response:
        offset = int(base64.b64decode(request.query["page"])) if "page" in request.query \
            else 0
        size = min(int(request.query.get("limit", "7")), self.page_size)
        chunk = buckets[offset:offset + size]
        more = offset + size < len(buckets)
        return web.json_response({
            "data": chunk, "has_more": more,
            "next_page": base64.b64encode(str(offset + size).encode()).decode()
            if more else None})

    async def _usage(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        days = self._days(request)
        if isinstance(days, web.Response):
            return days
        groups = request.query.getall("group_by[]", [])
        buckets = []
        for day in days:
            label = day.strftime("%Y-%m-%d")
            merged: dict[tuple[str | None, str | None], dict[str, int]] = {}
            for (d, model, key), counts in self.usage.items():
                if d != label:
                    continue
                group = (model if "model" in groups else None,
                         key if "api_key_id" in groups else None)
                sums = merged.setdefault(group, dict.fromkeys(USAGE_FIELDS, 0))
                for field in USAGE_FIELDS:
                    sums[field] += counts.get(field, 0)
            results = [{
                "uncached_input_tokens": s["uncached_input_tokens"],
                "cache_creation": {"ephemeral_1h_input_tokens": s["ephemeral_1h_input_tokens"],
                                   "ephemeral_5m_input_tokens": s["ephemeral_5m_input_tokens"]},
                "cache_read_input_tokens": s["cache_read_input_tokens"],
                "output_tokens": s["output_tokens"],
                "server_tool_use": {"web_search_requests": s["web_search_requests"]},
                "api_key_id": key, "workspace_id": None, "model": model,
                "service_tier": None, "context_window": None}
                for (model, key), s in sorted(merged.items(), key=str)]
            buckets.append(_bucket(day, results))
        return self._page(request, buckets)

    async def _cost(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        days = self._days(request)
        if isinstance(days, web.Response):
            return days
        by_description = "description" in request.query.getall("group_by[]", [])
        buckets = []
        for day in days:
            label = day.strftime("%Y-%m-%d")
            items = [c for c in self.costs if c[0] == label]
            if by_description:
                results = [{"currency": "USD", "amount": amount, "workspace_id": None,
                            "description": f"{model or cost_type} {token_type or ''}".strip(),
                            "cost_type": cost_type, "context_window": "0-200k" if model
                            else None, "model": model, "service_tier": "standard"
                            if model else None, "token_type": token_type}
                           for _, model, cost_type, token_type, amount in items]
            else:
                total = sum(float(c[4]) for c in items)
                results = [{"currency": "USD", "amount": str(total), "workspace_id": None,
                            "description": None, "cost_type": None, "context_window": None,
                            "model": None, "service_tier": None, "token_type": None}]
            buckets.append(_bucket(day, results))
        return self._page(request, buckets)

    def start(self) -> ServerThread:
        return ServerThread(self.app()).start()


def _bucket(day: datetime, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"starting_at": day.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ending_at": (day + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "results": results}


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
