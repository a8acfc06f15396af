"""Who is calling: pass-through credentials, or midway client keys mapped to principals."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from midway.config import Settings
from midway.exchange import Principal
from midway.secrets_ref import fingerprint, resolve

ANONYMOUS = Principal(id="anonymous", name="anonymous", kind="anonymous")


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


def passthrough_principal(credential: str | None) -> Principal:
    """The principal of a client whose own key goes upstream: named by a hash, never the key."""
    if not credential:
        return ANONYMOUS
    fp = fingerprint(credential)
    return Principal(id=f"key-{fp}", name=f"key-{fp}", kind="passthrough", key_id=fp)


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
                allow_project_header=entry.allow_project_header)

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def lookup(self, credential: str | None) -> Principal | None:
        if not credential:
            return None
        digest = hashlib.sha256(credential.encode("utf-8", "surrogateescape")).digest()
        # Keys are found by the SHA-256 of what was presented: the timing of the lookup
        # depends on that digest, never on how close a guess came to a real key.
        return self._by_digest.get(digest)
