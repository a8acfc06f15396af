"""Who may reach midway: local clients or the admin for its own routes (status pages,
dashboards, ``/metrics``), and no web page for ``/v1/*`` unless configured."""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import hmac
import ipaddress
from collections.abc import Collection

from aiohttp import web

from midway.config import Settings
from midway.context import Midway
from midway.secrets_ref import SecretError, resolve

# Browsers send these on requests a page makes to another site (a cross-site form POST).
_FOREIGN_SITES = ("cross-site", "same-site")


@functools.lru_cache(maxsize=1024)  # asked per request; Host values repeat
def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: never leaves the host
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=1024)  # asked per request; Host values repeat
def host_name(value: str) -> str:
    """The name in a ``Host`` header: without the port, brackets or a trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def host_refusal(request: web.Request, settings: Settings, *, loopback_names: bool = True,
                 also: Collection[str] = ()) -> str | None:
    """Why the ``Host`` header does not name this gateway (``None``: it does) — DNS
    rebinding, a web page's own name resolving to 127.0.0.1, shows there. With
    ``allowed_hosts`` set only those (and loopback names) are answered; else, with
    ``loopback_names``, a gateway listening on loopback answers loopback names only. ``also``:
    more names a caller knows this gateway by (a plugin's configured public URL's host)."""
    raw = request.headers.get("host")
    if raw is None:
        return None
    host = host_name(raw)
    if is_loopback(host) or host in also:
        return None
    allowed = settings.allowed_hosts
    if allowed:
        if not any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in allowed):
            return (f"Host {host[:100]!r} is not a name of this gateway; add it to "
                    "[midway] allowed_hosts")
    elif loopback_names and is_loopback(settings.host):
        return (f"this gateway listens on loopback and answers loopback names only, not "
                f"{host[:100]!r} (a web page's name, e.g. DNS rebinding); add it to "
                "[midway] allowed_hosts")
    return None


def browser_refusal(request: web.Request, settings: Settings, key_mode: bool) -> str | None:
    """Why a request to ``/v1/*`` or ``/metrics`` may have been made by a web page the user
    visits rather than by the user's tools (``None``: it may not).

    A name of the page's own (DNS rebinding: ``evil.example`` resolving to 127.0.0.1) shows in
    ``Host``; a page of another site in ``Origin`` / ``Sec-Fetch-Site``. Without client keys
    (the gateway's own credentials would pay) a loopback gateway answers only loopback names
    and ``allowed_hosts``, and refuses browser origins not in ``allowed_origins``. With client
    keys a page cannot present one it does not know: only ``allowed_hosts``, when set, applies.
    Tools (Claude Code, the SDKs, curl) send no ``Origin``. ``key_mode``: client keys are on
    (``settings.client_keys_enabled``, read once by the caller: it scans the environment).
    """
    refusal = host_refusal(request, settings, loopback_names=not key_mode)
    if refusal is not None:
        return refusal
    if key_mode:
        return None  # a page cannot present a key it does not know
    origins = settings.allowed_origins
    if "*" in origins:
        return None
    origin = request.headers.get("origin")
    if origin is not None and origin not in origins:
        return (f"requests from web pages (Origin {origin[:100]!r}) are refused: without client "
                "keys any page the user visits could spend this gateway's keys; add the origin "
                "to [midway] allowed_origins")
    if origin is None and request.headers.get("sec-fetch-site", "").lower() in _FOREIGN_SITES:
        return ("requests a web page makes to another site (Sec-Fetch-Site) are refused: "
                "without client keys any page the user visits could spend this gateway's keys")
    return None


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


def metrics_refusal(request: web.Request, midway: Midway) -> str | None:
    """Why ``/metrics`` is not served to this request (``[midway] metrics_auth``)."""
    settings = midway.settings
    mode = settings.metrics_auth
    if mode == "auto":
        mode = "local-or-admin" if midway.key_mode else "none"
    if mode == "admin" and not presents_admin_key(request, midway):
        return "/metrics is served with the admin key only ([midway] metrics_auth = \"admin\")"
    if mode == "local-or-admin" and not local_or_admin(request, midway):
        return ("/metrics is served to loopback clients or with the admin key ([midway] "
                "metrics_auth)")
    return browser_refusal(request, settings, midway.key_mode)
