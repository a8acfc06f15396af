"""HTTP routes for keys.

``/_midway/admin/...`` — the admin API: every operation, only with the admin key
(``[midway] admin_key``), never with a client key. Absent unless an admin key is configured.

``/_midway/keys`` — derived keys: a client key holding the ``keys:create`` capability may
issue, list and revoke keys below itself, each within its own scope.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from midway.config import ConfigError
from midway.errors import MidwayError, error_response
from midway.exchange import Principal
from midway.identity import presented_credential
from midway.keys.cache import KeyCache
from midway.keys.model import KeysError
from midway.keys.service import KeyService
from midway.timeparse import parse_duration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ADMIN = "/_midway/admin"
SELF = "/_midway/keys"


def openapi_document() -> bytes:
    return importlib.resources.files("midway.keys").joinpath("openapi.json").read_bytes()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data),
                        content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise KeysError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise KeysError("the request body must be a JSON object")
    return data


def _grace(body: dict[str, Any]) -> float:
    try:
        return parse_duration(body.get("grace", 0))
    except ConfigError as exc:
        raise KeysError(f"grace: {exc}") from None


def _guard(handler: Handler) -> Handler:
    """Turn key errors into Anthropic-format answers."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except KeysError as exc:
            return error_response(exc.status, str(exc))
        except MidwayError as exc:
            return error_response(exc.status, exc.message, error_type=exc.error_type,
                                  headers=exc.headers)

    return guarded


class AdminAPI:
    def __init__(self, service: KeyService, admin_key: str) -> None:
        self.service = service
        self._digest = hashlib.sha256(admin_key.encode()).digest()

    def _authorize(self, request: web.Request) -> None:
        presented = presented_credential(request.headers) or ""
        given = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(given, self._digest):
            raise MidwayError(401, "invalid admin key")

    def routes(self, app: web.Application) -> None:
        def add(method: str, path: str, fn: Callable[..., Awaitable[Any]],
                status: int = 200) -> None:
            async def handler(request: web.Request) -> web.StreamResponse:
                self._authorize(request)
                return _json(await fn(request), status)

            app.router.add_route(method, ADMIN + path, _guard(handler))

        async def spec(request: web.Request) -> web.Response:
            return web.Response(body=openapi_document(), content_type="application/json")

        app.router.add_get(ADMIN + "/openapi.json", spec)
        add("GET", "/keys", self.list_keys)
        add("POST", "/keys", self.create, 201)
        add("GET", "/keys/{id}", self.get)
        add("PATCH", "/keys/{id}", self.update)
        add("DELETE", "/keys/{id}", self.revoke)
        add("POST", "/keys/{id}/revoke", self.revoke)
        add("POST", "/keys/{id}/rotate", self.rotate)

    async def list_keys(self, request: web.Request) -> dict[str, Any]:
        records = await self.service.list_keys(request.query.get("parent_id") or None)
        return {"data": [r.as_dict() for r in records]}

    async def create(self, request: web.Request) -> dict[str, Any]:
        body = await _body(request)
        parent = body.pop("parent_id", None)
        if parent is not None and not isinstance(parent, str):
            raise KeysError("parent_id must be a string")
        return (await self.service.create(body, parent)).as_dict()

    async def get(self, request: web.Request) -> dict[str, Any]:
        return (await self.service.get(request.match_info["id"])).as_dict()

    async def update(self, request: web.Request) -> dict[str, Any]:
        record = await self.service.update(request.match_info["id"], await _body(request))
        return record.as_dict()

    async def revoke(self, request: web.Request) -> dict[str, Any]:
        return (await self.service.revoke(request.match_info["id"])).as_dict()

    async def rotate(self, request: web.Request) -> dict[str, Any]:
        grace = _grace(await _body(request))
        return (await self.service.rotate(request.match_info["id"], grace)).as_dict()


class DerivedKeysAPI:
    def __init__(self, service: KeyService, cache: KeyCache) -> None:
        self.service = service
        self.cache = cache

    async def _caller(self, request: web.Request) -> Principal:
        found = self.cache.lookup(presented_credential(request.headers))
        principal = await found if inspect.isawaitable(found) else found
        if principal is None:
            raise MidwayError(401, "invalid x-api-key")
        record = await self.service.get(principal.id)
        if "keys:create" not in record.scope.capabilities:
            raise MidwayError(403, "this key may not manage keys (it lacks keys:create)")
        return principal

    def routes(self, app: web.Application) -> None:
        def add(method: str, path: str, fn: Callable[..., Awaitable[Any]],
                status: int = 200) -> None:
            async def handler(request: web.Request) -> web.StreamResponse:
                caller = await self._caller(request)
                return _json(await fn(request, caller), status)

            app.router.add_route(method, SELF + path, _guard(handler))

        add("GET", "", self.list_keys)
        add("POST", "", self.create, 201)
        add("POST", "/{id}/revoke", self.revoke)

    async def list_keys(self, request: web.Request, caller: Principal) -> dict[str, Any]:
        return {"data": [r.as_dict() for r in await self.service.list_keys(caller.id)]}

    async def create(self, request: web.Request, caller: Principal) -> dict[str, Any]:
        body = await _body(request)
        if "parent_id" in body:
            raise KeysError("keys made here are always derived from the calling key; "
                            "leave out parent_id")
        return (await self.service.create(body, caller.id)).as_dict()

    async def revoke(self, request: web.Request, caller: Principal) -> dict[str, Any]:
        key_id = request.match_info["id"]
        if not await self.service.is_descendant(key_id, caller.id):
            raise KeysError(f"no key {key_id!r} below this key", 404)
        return (await self.service.revoke(key_id)).as_dict()
