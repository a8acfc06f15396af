"""``GET /_midway/router/status``: the live status of a running server (loopback clients, or
anyone presenting the admin key)."""

from __future__ import annotations

from aiohttp import web

from midway.access import local_or_admin
from midway.context import Midway
from midway.errors import error_response
from midway_router.router import ROUTER

PATH = "/_midway/router/status"


def add(app: web.Application, midway: Midway) -> None:
    async def status(request: web.Request) -> web.Response:
        if not local_or_admin(request, midway):
            return error_response(403, "router status is served to loopback clients or with "
                                   "the admin key")
        router = midway.services.get(ROUTER)
        return web.json_response(router.status() if router is not None else [])

    app.router.add_get(PATH, status)
