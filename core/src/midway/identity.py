"""Who is calling: pass-through credentials, or midway client keys mapped to principals."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from midway.config import ConfigError, Settings
from midway.datadir import install_secret
from midway.errors import MidwayError
from midway.exchange import (
    ErrorKind,
    Exchange,
    Principal,
    Request,
    Timings,
    new_request_id,
)
from midway.headers import CREDENTIAL_HEADERS, request_headers
from midway.hookspecs import hookimpl
from midway.keys.tokens import PREFIX
from midway.secrets_ref import SecretError, fingerprint, resolve

if TYPE_CHECKING:
    from midway.context import Midway

ANONYMOUS = Principal(id="anonymous", name="anonymous", kind="anonymous")
# The key of pass-through identities in this process: set by midway.server.build_app from
# identity_key(settings); random until then (plugin unit tests, which run no server).
_process_key = secrets.token_bytes(32)


def presented_credential(headers: Mapping[str, str]) -> str | None:
    """The credential a client presented: ``x-api-key``, else ``Authorization: Bearer``."""
    key = headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return auth
    return None


def presents_midway_key(headers: Mapping[str, str]) -> bool:
    """Whether any credential header holds a midway client key (``mw-…``), however malformed:
    one is never forwarded to an upstream."""
    for name in CREDENTIAL_HEADERS:
        value = headers.get(name)
        if not value or PREFIX not in value:  # the common case, decided without parsing
            continue
        value = value.strip()
        scheme, _, token = value.partition(" ")
        if value.startswith(PREFIX) or (scheme.lower() == "bearer" and
                                        token.strip().startswith(PREFIX)):
            return True
    return False


def identity_key(settings: Settings) -> bytes:
    """The secret pass-through identities are keyed with: ``[midway] identity_secret`` (a
    reference; instances sharing stores must share it), else this install's own secret in the
    data dir, created on first start."""
    if settings.identity_secret:
        try:
            secret = resolve(settings.identity_secret)
        except SecretError as exc:
            raise ConfigError(f"[midway] identity_secret: {exc}") from None
        if len(secret) < 32:
            raise ConfigError("[midway] identity_secret must be at least 32 characters "
                              "(e.g. `openssl rand -hex 32`)")
        return secret.encode()
    return install_secret(settings.data_dir)


def use_identity_key(key: bytes) -> None:
    """Make ``key`` this process's key of pass-through identities."""
    global _process_key
    _process_key = key


def passthrough_id(credential: str, key: bytes | None = None) -> str:
    """``key-<32 hex>``: HMAC-SHA-256 of the credential under the install's secret, 128 bits.
    Keyed, so nobody without the secret can compute a tenant from a credential, nor search
    for two credentials sharing one."""
    mac = hmac.new(key or _process_key, credential.encode("utf-8", "surrogateescape"),
                   hashlib.sha256)
    return f"key-{mac.hexdigest()[:32]}"


def passthrough_principal(credential: str | None, key: bytes | None = None) -> Principal:
    """The principal of a client whose own key goes upstream: named by a keyed hash (its
    identity: budgets, cache tenant), never the key. ``key_id`` is the short display
    fingerprint (:func:`midway.secrets_ref.fingerprint`), for reports only."""
    if not credential:
        return ANONYMOUS
    name, key_id = _passthrough_names(credential, key or _process_key)
    return Principal(id=name, name=name, kind="passthrough", key_id=key_id)


# A client sends the same credential on every request: its two hashes are computed once (the
# cache holds what request headers already hold, in this process only).
@functools.lru_cache(maxsize=256)
def _passthrough_names(credential: str, key: bytes) -> tuple[str, str]:
    return passthrough_id(credential, key), fingerprint(credential)


async def authenticate_exchange(midway: Midway, exchange: Exchange) -> Principal:
    """Who ``exchange``'s client is, as every request under ``/v1/`` is asked: the
    ``authenticate`` hook when the gateway requires client credentials (then the client's
    credential headers are removed: they never leave the gateway), else the passthrough
    principal of the key the client sends upstream. Raises a 401 ``MidwayError`` when no
    implementation knows the credential, a 500 naming a plugin that failed."""
    from midway.plugins import PluginFailed

    headers = exchange.request.headers
    credential = presented_credential(headers)
    if not midway.key_mode:
        if presents_midway_key(headers):
            # Refused, not stripped: stripped, the request would go upstream without a
            # credential (or the router's pooled one) for a caller nobody authenticated.
            raise MidwayError(401, "this is a midway client key (mw-…), but client keys "
                              "are not enabled on this gateway: set [keys] enabled = true "
                              "on the gateway, or send an Anthropic API key instead")
        return passthrough_principal(credential)
    try:
        principal, _ = await midway.plugins.first("authenticate", exchange=exchange,
                                                  credential=credential)
    except PluginFailed as exc:
        exchange.fail(ErrorKind.PLUGIN_FAILED, f"plugin {exc.plugin} failed in {exc.hook}")
        raise MidwayError(500, f"a midway plugin ({exc.plugin}) failed in {exc.hook}"
                          ) from None
    # The client's midway credential never leaves this process.
    for name in CREDENTIAL_HEADERS:
        headers.popall(name, None)
    if principal is None:
        raise MidwayError(401, "invalid x-api-key")
    assert isinstance(principal, Principal)
    return principal


async def authenticate_request(midway: Midway, request: web.Request) -> Principal:
    """:func:`authenticate_exchange` for a route of a plugin's own (outside ``/v1/``): the
    same hook, so a client is known by the same credentials everywhere (API keys, a
    signed-in person's token, …). Raises a 401 ``MidwayError`` for an unknown credential."""
    exchange = Exchange(
        id=new_request_id(),
        request=Request(method=request.method, path=request.rel_url.raw_path,
                        query_string=request.rel_url.raw_query_string,
                        headers=request_headers(request.headers), body=b""),
        principal=ANONYMOUS, client_address=request.remote or "",
        timings=Timings(started_at=time.time(), started=time.monotonic()), midway=midway)
    return await authenticate_exchange(midway, exchange)


class ClientKeys:
    """Config-defined midway keys, held only as SHA-256 digests."""

    def __init__(self, settings: Settings) -> None:
        self._by_digest: dict[bytes, Principal] = {}
        for entry in settings.client_keys:
            secret = resolve(entry.key)
            digest = hashlib.sha256(secret.encode()).digest()
            fp = fingerprint(secret)
            self._by_digest[digest] = Principal(
                id=entry.name, name=entry.name, team=entry.team, kind="key", key_id=fp,
                labels=dict(entry.labels), models=entry.models, upstreams=entry.upstreams,
                allow_project_header=entry.allow_project_header, groups=entry.groups)

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def lookup(self, credential: str | None) -> Principal | None:
        if not credential:
            return None
        digest = hashlib.sha256(credential.encode("utf-8", "surrogateescape")).digest()
        # Keys are found by the SHA-256 of what was presented: the timing of the lookup
        # depends on that digest, never on how close a guess came to a real key.
        return self._by_digest.get(digest)


class ClientKeysPlugin:
    """``[[midway.client_keys]]`` as a built-in plugin: the ``authenticate`` hook over the
    config-defined keys (see :mod:`midway.builtins`)."""

    def __init__(self) -> None:
        self.keys: ClientKeys | None = None

    @hookimpl
    def startup(self, midway: Midway) -> None:
        self.keys = ClientKeys(midway.settings)  # resolves env:/file: references now

    @hookimpl
    def authenticate(self, credential: str | None) -> Principal | None:
        return None if self.keys is None else self.keys.lookup(credential)
