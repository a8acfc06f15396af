"""Requests under /v1/ reach the proxy without aiohttp's router when the router would pick it
anyway (midway.server.direct_proxy); any route of a plugin's under /v1 keeps the router."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from aiohttp import web

from midway import hookimpl
from midway.server import PROXY_KEY, build_app, build_midway, direct_proxy
from midway.testing import make_settings

MSG = {"model": "claude-sonnet-4-6", "max_tokens": 32,
       "messages": [{"role": "user", "content": "hi"}]}


class V1Route:
    """A plugin serving a path under /v1 itself (as billing's spend limits do)."""

    @hookimpl
    def register_routes(self, app: web.Application) -> None:
        async def limits(request: web.Request) -> web.Response:
            return web.json_response({"served_by": "plugin"})
        app.router.add_get("/v1/organizations/limits", limits)


def _app(tmp_path, plugins=()):
    midway = build_midway(make_settings(tmp_path, "http://127.0.0.1:9"),
                          [(type(p).__name__, p) for p in plugins])
    return build_app(midway)


def test_the_proxy_is_called_directly_only_when_nothing_else_is_routed_under_v1(tmp_path):
    app = _app(tmp_path / "plain")
    direct = direct_proxy(app)
    assert direct is not None
    assert direct[0] == "/v1/" and direct[1] == app[PROXY_KEY].handle
    assert direct_proxy(_app(tmp_path / "v1", [V1Route()])) is None


def test_a_plugin_route_under_v1_is_served_by_the_plugin(midway_factory):
    proxy = midway_factory(plugins=[V1Route()])

    async def go() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as s, \
                s.get(proxy.url + "/v1/organizations/limits") as r:
            return r.status, await r.read()
    status, body = asyncio.run(go())
    assert status == 200 and orjson.loads(body) == {"served_by": "plugin"}


def test_expect_continue_and_direct_requests_are_relayed_alike(midway_factory, fake_upstream):
    proxy = midway_factory()

    async def go(expect: bool) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as s, s.post(
                proxy.url + "/v1/messages", data=orjson.dumps(MSG), expect100=expect,
                headers={"x-api-key": "sk-ant-k1"}) as r:
            return r.status, await r.read()
    for expect in (False, True):
        status, body = asyncio.run(go(expect))
        assert status == 200 and orjson.loads(body)["type"] == "message"
    assert len(fake_upstream.messages_requests) == 2
