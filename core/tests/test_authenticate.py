"""The ``authenticate`` hook: identity providers plug in beside the built-in key plugins."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from midway import Exchange, Principal, hookimpl
from midway.builtins import NAMES, builtin_plugins
from midway.plugins import PluginHost
from midway.testing_services import wait_for

MSG = orjson.dumps({"model": "claude-haiku-4-5", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}]})
ALICE = "mw-config-key-of-alice"
UPSTREAM_KEY = "sk-ant-upstream-secret"


class TokenIdentity:
    """An in-house provider: ``Authorization: Bearer tok-<name>`` names a person."""

    __name__ = "token_identity"

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        self.principals: list[Principal] = []

    @hookimpl
    def authenticate(self, credential: str | None) -> Principal | None:
        self.seen.append(credential)
        if credential and credential.startswith("tok-"):
            name = credential[4:]
            return Principal(id=f"sso:{name}", name=name, team="search", kind="sso")
        return None

    @hookimpl
    def post_response(self, exchange: Exchange) -> None:
        self.principals.append(exchange.principal)


def last(identity: TokenIdentity) -> Principal:
    wait_for(lambda: bool(identity.principals))  # post_response runs after the answer
    return identity.principals[-1]


async def _post(url: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/messages", data=MSG,
                                                    headers=headers) as r:
        return r.status, orjson.loads(await r.read())


@pytest.fixture
def gateway(midway_factory: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, TokenIdentity]:
    monkeypatch.setenv("MW_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    identity = TokenIdentity()
    proxy = midway_factory(plugins=[identity], upstream_api_key="env:MW_TEST_UPSTREAM_KEY",
                           client_keys=[{"key": ALICE, "name": "alice", "team": "t"}])
    return proxy, identity


def test_a_provider_names_the_principal_and_its_token_never_leaves(gateway, fake_upstream):
    proxy, identity = gateway
    status, _ = asyncio.run(_post(proxy.url, {"authorization": "Bearer tok-bob"}))
    assert status == 200
    assert last(identity).id == "sso:bob"
    assert last(identity).team == "search"
    sent = fake_upstream.messages_requests[-1].headers
    assert sent.get("x-api-key") == UPSTREAM_KEY
    assert "tok-bob" not in str(dict(sent))


def test_config_keys_still_authenticate_beside_a_provider(gateway, fake_upstream):
    proxy, identity = gateway
    status, _ = asyncio.run(_post(proxy.url, {"x-api-key": ALICE}))
    assert status == 200
    assert identity.seen == [ALICE]  # asked, said None; the built-in client_keys knew it
    assert last(identity).name == "alice"
    assert ALICE not in str(dict(fake_upstream.messages_requests[-1].headers))


def test_nobody_knows_the_credential_401_and_nothing_is_sent(gateway, fake_upstream):
    proxy, _ = gateway
    for headers in ({"x-api-key": "sk-ant-someone-elses"}, {"authorization": "Bearer x"}, {}):
        status, body = asyncio.run(_post(proxy.url, headers))
        assert status == 401
        assert body["error"]["type"] == "authentication_error"
    assert fake_upstream.messages_requests == []


def test_a_provider_that_raises_fails_the_request_naming_itself(midway_factory,
                                                                       fake_upstream):
    class Broken:
        __name__ = "broken_idp"

        @hookimpl
        def authenticate(self, credential: str | None) -> Principal | None:
            raise ConnectionError("directory unreachable")

    proxy = midway_factory(plugins=[Broken()],
                           client_keys=[{"key": ALICE, "name": "alice"}])
    status, body = asyncio.run(_post(proxy.url, {"x-api-key": "tok-x"}))
    assert status == 500
    assert "broken_idp" in body["error"]["message"]
    assert "authenticate" in body["error"]["message"]
    assert fake_upstream.messages_requests == []


def test_without_client_credentials_the_hook_is_not_called(midway_factory, fake_upstream):
    identity = TokenIdentity()
    proxy = midway_factory(plugins=[identity])
    status, _ = asyncio.run(_post(proxy.url, {"x-api-key": "sk-ant-own-key"}))
    assert status == 200
    assert identity.seen == []  # pass-through: the client's own key goes upstream
    assert last(identity).kind == "passthrough"
    assert fake_upstream.messages_requests[-1].headers["x-api-key"] == "sk-ant-own-key"


def test_every_host_gets_fresh_builtins_that_midway_plugins_cannot_remove():
    a, b = PluginHost(), PluginHost()
    a.load(only=[])
    b.load(only=[])
    assert [i.name for i in a.infos] == list(NAMES)
    assert all(i.source == "built-in" for i in a.infos)
    assert a.pm.get_plugin("keys") is not b.pm.get_plugin("keys")
    assert [name for name, _ in builtin_plugins()] == list(NAMES)
