"""Login sessions, kept server-side so that logging out ends them.

The cookie holds a random token; the store (``[dashboard] store``, SQLite in the data dir by
default, shared by every worker) holds only a keyed digest of it and its expiry. Logging out
deletes the row: the cookie is then worthless, even if it was copied. The digest is keyed
with the admin key, so changing the admin key ends every session too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from midway.storage import Database, Schema, StoreURL, Tx, open_database

SCHEMA = Schema("dashboard", """
CREATE TABLE IF NOT EXISTS midway_dashboard_sessions (
    id TEXT PRIMARY KEY,
    expires_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS midway_dashboard_sessions_expiry
    ON midway_dashboard_sessions (expires_at)
""")


class Sessions:
    def __init__(self, store: StoreURL, admin_key: str, lifetime: float) -> None:
        self.db: Database = open_database(store, label="[dashboard] store")
        self._key = hashlib.sha256(b"midway-dashboard-session\x00" + admin_key.encode()).digest()
        self.lifetime = lifetime

    async def open(self) -> None:
        await self.db.open(SCHEMA)

    async def close(self) -> None:
        await self.db.close()

    def _id(self, token: str) -> str:
        return hmac.new(self._key, token.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).hexdigest()

    async def create(self) -> str:
        """A new session's cookie value (expired sessions are swept on the way)."""
        token = secrets.token_urlsafe(32)
        now = time.time()

        async def unit(tx: Tx) -> None:
            await tx.execute("DELETE FROM midway_dashboard_sessions WHERE expires_at <= ?", now)
            await tx.execute("INSERT INTO midway_dashboard_sessions (id, expires_at) "
                             "VALUES (?, ?)", self._id(token), now + self.lifetime)

        await self.db.run(unit)
        return token

    async def valid(self, token: str) -> bool:
        # Looked up by a digest of the token: the database index, not a string comparison of
        # the secret, decides, so timing says nothing about the token.
        if not token or len(token) > 128:
            return False
        expires = await self.db.fetchval(
            "SELECT expires_at FROM midway_dashboard_sessions WHERE id = ?", self._id(token))
        return expires is not None and float(expires) > time.time()

    async def end(self, token: str) -> None:
        await self.db.execute("DELETE FROM midway_dashboard_sessions WHERE id = ?",
                              self._id(token))
