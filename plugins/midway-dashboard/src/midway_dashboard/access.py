"""Who may see the dashboard.

With an admin key configured, every request must present it: ``Authorization: Bearer``,
``x-api-key``, or the session cookie that the login form sets. Without one, the dashboard is
served to loopback clients only and is invisible (404) to anyone else. Client keys are never
accepted: they let people spend, not look at everyone's prompts.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import time

from aiohttp import web

from midway.access import is_local_request

COOKIE = "midway_dashboard"
COOKIE_PATH = "/_midway/"


class Verdict(enum.Enum):
    ALLOW = "allow"
    LOGIN = "login"  # 401: an admin key is configured and was not presented
    HIDDEN = "hidden"  # 404: no admin key and the client is not on loopback


def _digest(value: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison constant-time whatever the lengths.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class Access:
    """The dashboard's gate. ``admin_key`` is the resolved secret, or ``None``."""

    def __init__(self, admin_key: str | None, session_seconds: float = 12 * 3600) -> None:
        self._admin = _digest(admin_key) if admin_key else None
        # Sessions are signed with a key derived from the admin key: stateless (valid in every
        # worker process) and all invalidated when the admin key changes.
        self._signing = hashlib.sha256(b"midway-dashboard-session\x00" +
                                       admin_key.encode()).digest() if admin_key else b""
        self.session_seconds = session_seconds

    @property
    def protected(self) -> bool:
        return self._admin is not None

    def key_matches(self, presented: str) -> bool:
        return self._admin is not None and hmac.compare_digest(_digest(presented), self._admin)

    def check(self, request: web.Request) -> Verdict:
        if self._admin is None:
            return Verdict.ALLOW if self._loopback_only_ok(request) else Verdict.HIDDEN
        presented = _presented_key(request)
        if presented is not None and self.key_matches(presented):
            return Verdict.ALLOW
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and self.session_valid(cookie):
            return Verdict.ALLOW
        return Verdict.LOGIN

    @staticmethod
    def _loopback_only_ok(request: web.Request) -> bool:
        return is_local_request(request)

    def new_session(self, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.session_seconds)
        return f"{expires}.{self._sign(expires)}"

    def session_valid(self, value: str, now: float | None = None) -> bool:
        if self._admin is None:
            return False
        expires_text, _, signature = value.partition(".")
        if not expires_text.isdigit() or len(expires_text) > 12:
            return False
        expires = int(expires_text)
        if not hmac.compare_digest(signature.encode(), self._sign(expires).encode()):
            return False
        return expires > (time.time() if now is None else now)

    def _sign(self, expires: int) -> str:
        return hmac.new(self._signing, str(expires).encode(), hashlib.sha256).hexdigest()


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None
