"""Who may see the dashboard.

With an admin key configured, every request must present it: ``Authorization: Bearer``,
``x-api-key``, or the session cookie that the login form sets (a server-side session that
logging out ends, :mod:`midway_dashboard.sessions`). Without one, the dashboard is served to
loopback clients only and is invisible (404) to anyone else. Client keys are never accepted:
they let people spend, not look at everyone's prompts.

Every key presented — in the form or in a header — is compared in constant time and counted
per client address by :class:`~midway_dashboard.attempts.AttemptLimiter`: guesses are slowed,
the right key is never locked out.
"""

from __future__ import annotations

import enum
import hashlib
import hmac

from aiohttp import web

from midway.access import is_local_request
from midway_dashboard.attempts import AttemptLimiter, Outcome
from midway_dashboard.sessions import Sessions

COOKIE = "midway_dashboard"
COOKIE_PATH = "/_midway/"


class Verdict(enum.Enum):
    ALLOW = "allow"
    LOGIN = "login"  # 401: an admin key is configured and was not presented
    BUSY = "busy"  # 429: this address is sending wrong keys faster than they are evaluated
    HIDDEN = "hidden"  # 404: no admin key and the client is not on loopback


def _digest(value: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison constant-time whatever the lengths.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class Access:
    """The dashboard's gate. ``admin_key`` is the resolved secret, or ``None`` (then
    ``sessions`` is ``None`` too)."""

    def __init__(self, admin_key: str | None, sessions: Sessions | None,
                 limiter: AttemptLimiter | None = None) -> None:
        self._admin = _digest(admin_key) if admin_key else None
        self.sessions = sessions
        self.limiter = limiter or AttemptLimiter()

    @property
    def protected(self) -> bool:
        return self._admin is not None

    @property
    def session_seconds(self) -> float:
        return self.sessions.lifetime if self.sessions is not None else 0.0

    def key_matches(self, presented: str) -> bool:
        return self._admin is not None and hmac.compare_digest(_digest(presented), self._admin)

    async def try_key(self, request: web.Request, presented: str) -> Outcome:
        """``presented`` checked against the admin key, limited per client address."""
        return await self.limiter.attempt(request.remote or "",
                                          lambda: self.key_matches(presented))

    async def check(self, request: web.Request) -> Verdict:
        if self._admin is None:
            return Verdict.ALLOW if is_local_request(request) else Verdict.HIDDEN
        presented = _presented_key(request)
        if presented is not None:
            outcome = await self.try_key(request, presented)
            if outcome is Outcome.RIGHT:
                return Verdict.ALLOW
            if outcome is Outcome.BUSY:
                return Verdict.BUSY
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and self.sessions is not None and \
                await self.sessions.valid(cookie):
            return Verdict.ALLOW
        return Verdict.LOGIN


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None
