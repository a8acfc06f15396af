"""midway's own access tokens: HS256 JWTs (joserfc) naming a session.

A token carries the session id (``jti``), the person (``sub``: midway's stable person id) and
their groups; Claude Code reads ``exp`` and ``sub`` from it unverified. midway verifies the
signature, issuer, audience and expiry, then asks the store (through a short cache) whether
the session still stands.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc import jwe, jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import OctKey

from midway.datadir import install_secret

AUDIENCE = "midway"
ALGORITHM = "HS256"


def signing_key(configured: str | None, data_dir: Path,
                purpose: bytes = b"midway-identity access tokens v1") -> OctKey:
    """The key tokens are signed with: derived (HKDF-SHA256) from ``[identity] signing_key``,
    else from this install's secret in the data dir (0600, created on first start).
    ``purpose`` derives another key from the same secret (the sealing key)."""
    material = configured.encode() if configured is not None else install_secret(data_dir)
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(material)
    return OctKey.import_key(derived)


class Sealer:
    """Keeps a secret unreadable at rest (the IdP's refresh token in the store): JWE with
    ``dir`` + A256GCM (joserfc) under a key derived from the signing secret."""

    def __init__(self, key: OctKey) -> None:
        self.key = key

    def seal(self, secret: str) -> str:
        return jwe.encrypt_compact({"alg": "dir", "enc": "A256GCM"}, secret.encode(), self.key)

    def open(self, sealed: str) -> str | None:
        """The secret, or ``None`` when it was sealed under another key (or tampered with)."""
        try:
            plaintext = jwe.decrypt_compact(sealed, self.key).plaintext
        except (JoseError, ValueError):
            return None
        return plaintext.decode() if plaintext is not None else None


class TokenError(Exception):
    """The token is not one of ours, or no longer valid (the message says which)."""


class Minter:
    def __init__(self, key: OctKey, issuer: str, lifetime: float) -> None:
        self.key = key
        self.issuer = issuer
        self.lifetime = lifetime

    def mint(self, session_id: str, person_id: str, email: str | None,
             groups: tuple[str, ...]) -> tuple[str, int]:
        now = int(time.time())
        expires_in = int(self.lifetime)
        claims: dict[str, Any] = {"iss": self.issuer, "aud": AUDIENCE, "sub": person_id,
                                  "jti": session_id, "iat": now, "exp": now + expires_in,
                                  "groups": list(groups)}
        if email:
            claims["email"] = email
        return jwt.encode({"alg": ALGORITHM, "typ": "JWT"}, claims, self.key), expires_in

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token; :class:`TokenError` otherwise."""
        try:
            decoded = jwt.decode(token, self.key, algorithms=[ALGORITHM])
            registry = jwt.JWTClaimsRegistry(
                leeway=30, iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": AUDIENCE}, exp={"essential": True},
                sub={"essential": True}, jti={"essential": True})
            registry.validate(decoded.claims)
        except ExpiredTokenError:
            raise TokenError("expired") from None
        except JoseError:
            raise TokenError("invalid") from None
        except (ValueError, TypeError):
            raise TokenError("invalid") from None
        claims: dict[str, Any] = dict(decoded.claims)
        return claims


def looks_like_jwt(credential: str) -> bool:
    return credential.startswith("eyJ") and credential.count(".") == 2 and len(credential) < 8192
