"""Where sign-ins live: pending device codes, sessions and refresh tokens.

Every instance behind one URL shares the store (``[identity] store``): a code confirmed in a
browser served by one instance is collected by a poll answered by another, and a session
revoked on one is refused by all. Secrets are kept only as SHA-256 digests (device codes,
refresh tokens); a session's id is the ``jti`` of every access token minted for it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

import attrs
import orjson

from midway.storage import Database, Row, Schema, StoreURL, Tx, open_database

SCHEMA = Schema("identity", """
CREATE TABLE IF NOT EXISTS midway_identity_devices (
    device_digest TEXT PRIMARY KEY, user_code TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL, surface TEXT, created_at {real} NOT NULL,
    expires_at {real} NOT NULL, last_poll {real}, state_digest TEXT,
    browser_digest TEXT, nonce TEXT, code_verifier TEXT, session_id TEXT);
CREATE INDEX IF NOT EXISTS midway_identity_devices_expiry
    ON midway_identity_devices (expires_at);
CREATE INDEX IF NOT EXISTS midway_identity_devices_state
    ON midway_identity_devices (state_digest);
CREATE TABLE IF NOT EXISTS midway_identity_sessions (
    id TEXT PRIMARY KEY, person_id TEXT NOT NULL, issuer TEXT NOT NULL,
    subject TEXT NOT NULL, email TEXT, name TEXT, groups TEXT NOT NULL,
    surface TEXT, created_at {real} NOT NULL, expires_at {real} NOT NULL,
    refreshed_at {real}, revoked_at {real}, revoked_reason TEXT, idp_refresh TEXT);
CREATE INDEX IF NOT EXISTS midway_identity_sessions_person
    ON midway_identity_sessions (person_id);
CREATE TABLE IF NOT EXISTS midway_identity_refresh (
    digest TEXT PRIMARY KEY, session_id TEXT NOT NULL, created_at {real} NOT NULL,
    used_at {real});
CREATE INDEX IF NOT EXISTS midway_identity_refresh_session
    ON midway_identity_refresh (session_id)
""")

# RFC 8628 section 6.1: a base-20 alphabet with no vowels, eight characters (~34.5 bits).
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def new_user_code() -> str:
    code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
    return f"{code[:4]}-{code[4:]}"


def normalise_user_code(text: str) -> str:
    letters = "".join(c for c in text.upper() if c.isalnum())[:8]
    return f"{letters[:4]}-{letters[4:]}" if len(letters) == 8 else ""


@attrs.frozen
class Person:
    """Who signed in, as the IdP said."""

    person_id: str
    issuer: str
    subject: str
    email: str | None
    name: str | None
    groups: tuple[str, ...]


@attrs.frozen
class Session:
    id: str
    person: Person
    surface: str | None
    created_at: float
    expires_at: float
    refreshed_at: float | None
    revoked_at: float | None
    revoked_reason: str | None
    idp_refresh: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and self.expires_at > time.time()

    def as_dict(self) -> dict[str, Any]:
        status = ("revoked" if self.revoked_at is not None
                  else "active" if self.expires_at > time.time() else "expired")
        return {"id": self.id, "person_id": self.person.person_id,
                "subject": self.person.subject, "email": self.person.email,
                "name": self.person.name, "groups": list(self.person.groups),
                "surface": self.surface, "status": status, "created_at": self.created_at,
                "expires_at": self.expires_at, "refreshed_at": self.refreshed_at,
                "revoked_at": self.revoked_at, "revoked_reason": self.revoked_reason}


def _session(row: Row) -> Session:
    person = Person(person_id=row["person_id"], issuer=row["issuer"], subject=row["subject"],
                    email=row["email"], name=row["name"],
                    groups=tuple(orjson.loads(row["groups"])))
    return Session(id=row["id"], person=person, surface=row["surface"],
                   created_at=float(row["created_at"]), expires_at=float(row["expires_at"]),
                   refreshed_at=row["refreshed_at"], revoked_at=row["revoked_at"],
                   revoked_reason=row["revoked_reason"], idp_refresh=row["idp_refresh"])


_SELECT_SESSIONS = ("SELECT id, person_id, issuer, subject, email, name, groups, surface, "
                    "created_at, expires_at, refreshed_at, revoked_at, revoked_reason, "
                    "idp_refresh FROM midway_identity_sessions")


@attrs.frozen
class Poll:
    """What a device-code poll finds: ``status`` is an RFC 8628 error or ``approved``."""

    status: str
    session: Session | None = None


class IdentityStore:
    def __init__(self, store: StoreURL, schema: str | None = None) -> None:
        self.db: Database = open_database(store, schema=schema, label="[identity] store")

    async def open(self) -> None:
        await self.db.open(SCHEMA)

    async def close(self) -> None:
        await self.db.close()

    # -- device codes ---------------------------------------------------------------------

    async def new_device(self, lifetime: float, surface: str | None) -> tuple[str, str]:
        """A new ``(device_code, user_code)`` pair, pending; expired ones are swept."""
        device_code = secrets.token_urlsafe(32)  # 256 bits
        now = time.time()
        for _ in range(5):
            user_code = new_user_code()

            async def unit(tx: Tx, user_code: str = user_code) -> bool:
                await tx.execute("DELETE FROM midway_identity_devices WHERE expires_at < ?",
                                 now - 3600)
                taken = await tx.fetchval("SELECT 1 FROM midway_identity_devices "
                                          "WHERE user_code = ?", user_code)
                if taken:
                    return False
                await tx.execute(
                    "INSERT INTO midway_identity_devices (device_digest, user_code, status, "
                    "surface, created_at, expires_at) VALUES (?, ?, 'pending', ?, ?, ?)",
                    digest(device_code), user_code, (surface or "")[:64] or None, now,
                    now + lifetime)
                return True

            if await self.db.run(unit):
                return device_code, user_code
        raise RuntimeError("could not draw a free user code")

    async def pending_by_user_code(self, user_code: str) -> bool:
        row = await self.db.fetchone(
            "SELECT status, expires_at FROM midway_identity_devices WHERE user_code = ?",
            user_code)
        return row is not None and row["status"] == "pending" and \
            float(row["expires_at"]) > time.time()

    async def start_browser(self, user_code: str, state: str, browser: str, nonce: str,
                            code_verifier: str) -> bool:
        """Bind a pending code to the browser leg about to start (its ``state``)."""
        async def unit(tx: Tx) -> bool:
            row = await tx.fetchone(
                "SELECT status, expires_at FROM midway_identity_devices WHERE user_code = ?",
                user_code)
            if row is None or row["status"] != "pending" or \
                    float(row["expires_at"]) <= time.time():
                return False
            await tx.execute(
                "UPDATE midway_identity_devices SET state_digest = ?, browser_digest = ?, "
                "nonce = ?, code_verifier = ? WHERE user_code = ?",
                digest(state), digest(browser), nonce, code_verifier, user_code)
            return True

        return bool(await self.db.run(unit))

    async def browser_leg(self, state: str) -> Row | None:
        return await self.db.fetchone(
            "SELECT user_code, status, surface, expires_at, browser_digest, nonce, "
            "code_verifier "
            "FROM midway_identity_devices WHERE state_digest = ?", digest(state))

    async def finish_device(self, user_code: str, session_id: str | None) -> None:
        """Approve (``session_id``) or deny (``None``) a pending code."""
        await self.db.execute(
            "UPDATE midway_identity_devices SET status = ?, session_id = ?, state_digest = NULL "
            "WHERE user_code = ? AND status = 'pending'",
            "approved" if session_id else "denied", session_id, user_code)

    async def poll(self, device_code: str, interval: float) -> Poll:
        now = time.time()

        async def unit(tx: Tx) -> Poll:
            row = await tx.fetchone(
                "SELECT status, expires_at, last_poll, session_id "
                "FROM midway_identity_devices WHERE device_digest = ?", digest(device_code))
            if row is None:
                return Poll("invalid_grant")
            if row["status"] == "consumed":
                return Poll("invalid_grant")
            if float(row["expires_at"]) <= now:
                return Poll("expired_token")
            if row["status"] == "denied":
                return Poll("access_denied")
            last = row["last_poll"]
            await tx.execute("UPDATE midway_identity_devices SET last_poll = ? "
                             "WHERE device_digest = ?", now, digest(device_code))
            if row["status"] == "pending":
                # RFC 8628 3.5: polling faster than the interval (less a second of jitter)
                return Poll("slow_down" if last is not None and now - float(last) <
                            interval - 1 else "authorization_pending")
            # approved: single use
            await tx.execute("UPDATE midway_identity_devices SET status = 'consumed' "
                             "WHERE device_digest = ?", digest(device_code))
            srow = await tx.fetchone(_SELECT_SESSIONS + " WHERE id = ?", row["session_id"])
            if srow is None:
                return Poll("access_denied")
            return Poll("approved", _session(srow))

        result: Poll = await self.db.run(unit)
        return result

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(self, person: Person, surface: str | None, lifetime: float,
                             idp_refresh: str | None) -> Session:
        now = time.time()
        session = Session(id=secrets.token_urlsafe(16), person=person, surface=surface,
                          created_at=now, expires_at=now + lifetime, refreshed_at=None,
                          revoked_at=None, revoked_reason=None, idp_refresh=idp_refresh)
        await self.db.execute(
            "INSERT INTO midway_identity_sessions (id, person_id, issuer, subject, email, "
            "name, groups, surface, created_at, expires_at, refreshed_at, revoked_at, "
            "revoked_reason, idp_refresh) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            session.id, person.person_id, person.issuer, person.subject, person.email,
            person.name, orjson.dumps(list(person.groups)).decode(), surface, now,
            session.expires_at, None, None, None, idp_refresh)
        return session

    async def session(self, session_id: str) -> Session | None:
        row = await self.db.fetchone(
            _SELECT_SESSIONS + " WHERE id = ?", session_id)
        return _session(row) if row is not None else None

    async def update_session(self, session_id: str, groups: tuple[str, ...] | None,
                             idp_refresh: str | None) -> None:
        async def unit(tx: Tx) -> None:
            await tx.execute("UPDATE midway_identity_sessions SET refreshed_at = ? "
                             "WHERE id = ?", time.time(), session_id)
            if groups is not None:
                await tx.execute("UPDATE midway_identity_sessions SET groups = ? WHERE id = ?",
                                 orjson.dumps(list(groups)).decode(), session_id)
            if idp_refresh is not None:
                await tx.execute("UPDATE midway_identity_sessions SET idp_refresh = ? "
                                 "WHERE id = ?", idp_refresh, session_id)

        await self.db.run(unit)

    async def sessions(self, person: str | None = None, active_only: bool = False
                       ) -> list[Session]:
        """Sessions, newest first; ``person``: an e-mail, a subject or a person id."""
        sql = _SELECT_SESSIONS
        args: list[Any] = []
        if person is not None:
            sql += " WHERE (email = ? OR subject = ? OR person_id = ? OR id = ?)"
            args += [person, person, person, person]
        sql += " ORDER BY created_at DESC"
        found = [_session(r) for r in await self.db.fetch(sql, *args)]
        return [s for s in found if s.active] if active_only else found

    async def revoke(self, session_ids: list[str], reason: str) -> int:
        if not session_ids:
            return 0
        now = time.time()

        async def unit(tx: Tx) -> int:
            count = 0
            for sid in session_ids:
                row = await tx.fetchone("SELECT revoked_at FROM midway_identity_sessions "
                                        "WHERE id = ?", sid)
                if row is None or row["revoked_at"] is not None:
                    continue
                await tx.execute("UPDATE midway_identity_sessions SET revoked_at = ?, "
                                 "revoked_reason = ?, idp_refresh = NULL WHERE id = ?",
                                 now, reason[:200], sid)
                await tx.execute("UPDATE midway_identity_refresh SET used_at = ? "
                                 "WHERE session_id = ? AND used_at IS NULL", now, sid)
                count += 1
            return count

        revoked: int = await self.db.run(unit)
        return revoked

    # -- refresh tokens -----------------------------------------------------------------------

    async def new_refresh(self, session_id: str) -> str:
        token = secrets.token_urlsafe(32)
        await self.db.execute("INSERT INTO midway_identity_refresh (digest, session_id, "
                              "created_at) VALUES (?, ?, ?)", digest(token), session_id,
                              time.time())
        return token

    async def peek_refresh(self, token: str, grace: float = 0.0) -> tuple[str, Session | None]:
        """What a refresh token stands for, without spending it: ``("ok" | "race" | "used",
        session)`` (``race``: spent less than ``grace`` seconds ago, by a concurrent refresh
        of the same client) or ``("unknown", None)``."""
        row = await self.db.fetchone("SELECT session_id, used_at FROM midway_identity_refresh "
                                     "WHERE digest = ?", digest(token))
        if row is None:
            return "unknown", None
        used = row["used_at"]
        status = "ok" if used is None else "race" if time.time() - float(used) < grace \
            else "used"
        return status, await self.session(row["session_id"])

    async def use_refresh(self, token: str, grace: float = 0.0
                          ) -> tuple[str, Session | None]:
        """Spend a refresh token: ``("ok", session)``, ``("race", session)`` (spent less than
        ``grace`` seconds ago: two refreshes of one client crossed), ``("reused", session)``
        (the session is revoked: a token was presented twice, so someone holds a copy), or
        ``("unknown", None)``."""
        now = time.time()

        async def unit(tx: Tx) -> tuple[str, Session | None]:
            row = await tx.fetchone("SELECT session_id, used_at FROM midway_identity_refresh "
                                    "WHERE digest = ?", digest(token))
            if row is None:
                return "unknown", None
            srow = await tx.fetchone(_SELECT_SESSIONS + " WHERE id = ?", row["session_id"])
            session = _session(srow) if srow is not None else None
            if row["used_at"] is not None:
                if now - float(row["used_at"]) < grace:
                    return "race", session
                if session is not None and session.revoked_at is None:
                    await tx.execute("UPDATE midway_identity_sessions SET revoked_at = ?, "
                                     "revoked_reason = ?, idp_refresh = NULL WHERE id = ?",
                                     now, "refresh token reused", session.id)
                    await tx.execute("UPDATE midway_identity_refresh SET used_at = ? "
                                     "WHERE session_id = ? AND used_at IS NULL", now,
                                     session.id)
                return "reused", session
            await tx.execute("UPDATE midway_identity_refresh SET used_at = ? WHERE digest = ?",
                             now, digest(token))
            return "ok", session

        result: tuple[str, Session | None] = await self.db.run(unit)
        return result
