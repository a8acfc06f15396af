"""``GET /_midway/router/status``: the live status of a running server (loopback clients, or
anyone presenting the admin key)."""

from __future__ import annotations

import hmac

from aiohttp import web

from midway.context import Midway
from midway.errors import error_response
from midway.secrets_ref import resolve
from midway.server import is_loopback

PATH = "/_midway/router/status"


def _allowed(request: web.Request, midway: Midway) -> bool:
    if is_loopback(request.remote or ""):
        return True
    ref = midway.settings.admin_key
    if not ref:
        return False
    presented = request.headers.get("x-api-key") or \
        request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return bool(presented) and hmac.compare_digest(presented.encode(), resolve(ref).encode())


def add(app: web.Application, midway: Midway) -> None:
    async def status(request: web.Request) -> web.Response:
        if not _allowed(request, midway):
            return error_response(403, "router status is served to loopback clients or with "
                                   "the admin key")
        router = midway.services.get("router")
        return web.json_response(router.status() if router is not None else [])

    app.router.add_get(PATH, status)
