"""Who is calling: pass-through credentials, or midway client keys mapped to principals."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING

from midway.config import ConfigError, Settings
from midway.datadir import install_secret
from midway.exchange import Principal
from midway.headers import CREDENTIAL_HEADERS
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
