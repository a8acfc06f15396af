"""Who may read midway's own routes (status pages, dashboards): local clients or the admin."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from midway.context import Midway
from midway.secrets_ref import SecretError, resolve
from midway.server import is_loopback


def is_local_request(request: web.Request) -> bool:
    """A loopback client that also addressed a loopback name.

    The ``Host`` check stops DNS rebinding: a web page whose name resolves to 127.0.0.1 would
    otherwise read local-only routes through the visitor's browser.
    """
    host = (request.url.host or "").strip("[]")
    return is_loopback(request.remote or "") and is_loopback(host)


def presents_admin_key(request: web.Request, midway: Midway) -> bool:
    """Whether the request carries the configured admin key (constant-time comparison)."""
    ref = midway.settings.admin_key
    if not ref:
        return False
    presented = request.headers.get("x-api-key") or \
        request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not presented:
        return False
    try:
        secret = resolve(ref)
    except SecretError:
        return False
    # Digests of equal length: the comparison's time says nothing about the key's length.
    return hmac.compare_digest(_digest(presented), _digest(secret))


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def local_or_admin(request: web.Request, midway: Midway) -> bool:
    """The rule for read-only status routes: local clients, or anyone with the admin key."""
    return is_local_request(request) or presents_admin_key(request, midway)
