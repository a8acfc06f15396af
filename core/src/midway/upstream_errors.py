"""Why an upstream could not be reached, in words a person can act on, and its URL fit for a
log line or an error body (no userinfo, no query: never a credential)."""

from __future__ import annotations

import errno
import socket
import ssl

import aiohttp
from yarl import URL


def public_url(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``, without user, password, query or fragment."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return "(an invalid URL)"
    if not parsed.is_absolute():
        return "(an invalid URL)"
    return str(parsed.with_user(None).with_query(None).with_fragment(None))


def connect_cause(exc: BaseException) -> str:
    """What failed while connecting: ``connection refused``, ``DNS lookup failed (…)``,
    ``TLS error (…)``, ``connect timed out``, or the system's words."""
    inner: BaseException = exc
    while True:  # the error underneath aiohttp's and the fast client's wrappers
        cert = getattr(inner, "certificate_error", None)
        nested = cert or getattr(inner, "os_error", None) or getattr(inner, "cause", None)
        if not isinstance(nested, BaseException) or nested is inner:
            break
        inner = nested
    if isinstance(inner, ssl.SSLError | ssl.CertificateError | aiohttp.ClientSSLError):
        reason = getattr(inner, "verify_message", None) or getattr(inner, "reason", None) \
            or str(inner)
        return f"TLS error ({str(reason).lower()})"
    if isinstance(inner, socket.gaierror):
        return f"DNS lookup failed ({inner.strerror or inner})"
    if isinstance(inner, TimeoutError):
        return "connect timed out"
    if isinstance(inner, ConnectionRefusedError) or getattr(inner, "errno", None) == \
            errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()
    return str(inner) or type(inner).__name__
