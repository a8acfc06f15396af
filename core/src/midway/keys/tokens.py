"""The shape of a midway key and how it is stored.

A key reads ``mw-<prefix>_<secret>``: ``<prefix>`` (12 base32 characters) names the stored
credential and is safe to show; ``<secret>`` is 32 random bytes (256 bits, base64url). Only
``HMAC-SHA256(salt, secret)`` with a random per-credential salt is stored. A slow password hash
(scrypt, argon2) exists to make guessing low-entropy secrets expensive; a 256-bit random secret
cannot be guessed, so a fast keyed hash loses nothing and keeps every lookup cheap, which is
what bounds the CPU a brute-force attempt costs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

PREFIX = "mw-"
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_KEY_RE = re.compile(r"mw-([a-z2-7]{12})_([A-Za-z0-9_-]{43})")
# Compared against when the prefix is unknown, so that path does the same work as a known one.
_DUMMY_SALT = secrets.token_bytes(16)
_DUMMY_DIGEST = hmac.new(_DUMMY_SALT, b"-", hashlib.sha256).digest()


def random_id(length: int = 12) -> str:
    return "".join(secrets.choice(_B32) for _ in range(length))


def new_key_id() -> str:
    """A stable key id (the principal's id), e.g. ``key_3fj2k4...``."""
    return f"key_{random_id()}"


def new_secret() -> tuple[str, str]:
    """``(secret_id, full key)`` for a new credential."""
    secret_id = random_id()
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return secret_id, f"{PREFIX}{secret_id}_{token}"


def parse(credential: str) -> tuple[str, str] | None:
    """``(secret_id, secret)`` of a well-formed key, else ``None``."""
    match = _KEY_RE.fullmatch(credential)
    if match is None:
        return None
    return match.group(1), match.group(2)


def visible_prefix(secret_id: str) -> str:
    return f"{PREFIX}{secret_id}"


def new_salt() -> bytes:
    return secrets.token_bytes(16)


def digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def matches(salt: bytes | None, stored: bytes | None, secret: str) -> bool:
    """Constant-time check of ``secret``; an unknown credential (``None``) costs the same."""
    if salt is None or stored is None:
        hmac.compare_digest(digest(_DUMMY_SALT, secret), _DUMMY_DIGEST)
        return False
    return hmac.compare_digest(digest(salt, secret), stored)
