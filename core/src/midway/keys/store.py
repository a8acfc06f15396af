"""Where keys live: tables, and the version counter every instance polls for changes.

Every write bumps one counter row inside its transaction and stamps the rows it touched with
the new value. The row lock serialises writers, so versions become visible in order and an
instance that has seen version N can ask for exactly what changed after N.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import attrs
import orjson

from midway.keys.config import LABEL, KeysConfig
from midway.keys.model import Credential, KeyRecord, KeysError, Scope, check_record
from midway.storage import Database, Row, Schema, Tx, open_database, retrying

log = logging.getLogger("midway.keys")

SCHEMA = Schema("keys", """
CREATE TABLE IF NOT EXISTS midway_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, team TEXT, labels TEXT NOT NULL,
    models TEXT NOT NULL, upstreams TEXT NOT NULL, capabilities TEXT NOT NULL,
    allow_project_header INTEGER NOT NULL, parent_id TEXT,
    created_at {real} NOT NULL, expires_at {real}, revoked_at {real},
    version {int} NOT NULL, groups TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS midway_key_credentials (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL REFERENCES midway_keys(id),
    salt {blob} NOT NULL, digest {blob} NOT NULL, created_at {real} NOT NULL,
    not_after {real}, version {int} NOT NULL);
CREATE INDEX IF NOT EXISTS midway_keys_version ON midway_keys(version);
CREATE INDEX IF NOT EXISTS midway_keys_parent ON midway_keys(parent_id);
CREATE INDEX IF NOT EXISTS midway_key_credentials_key ON midway_key_credentials(key_id);
CREATE INDEX IF NOT EXISTS midway_key_credentials_version ON midway_key_credentials(version);
CREATE TABLE IF NOT EXISTS midway_keys_meta (name TEXT PRIMARY KEY, value {int} NOT NULL);
INSERT INTO midway_keys_meta (name, value) VALUES ('version', 0) ON CONFLICT DO NOTHING
""")


_SELECT_KEYS = ("SELECT id, name, team, labels, models, upstreams, capabilities, "
                "allow_project_header, parent_id, created_at, expires_at, revoked_at, "
                "groups FROM midway_keys")
_SELECT_CREDENTIALS = ("SELECT id, key_id, salt, digest, created_at, not_after "
                       "FROM midway_key_credentials")


def _dump(value: Any) -> str:
    return orjson.dumps(value).decode()


def _credential(row: Row) -> Credential:
    return Credential(id=row["id"], key_id=row["key_id"], salt=bytes(row["salt"]),
                      digest=bytes(row["digest"]), created_at=row["created_at"],
                      not_after=row["not_after"])


def _record(row: Row, credentials: Iterable[Credential] = ()) -> KeyRecord:
    """A key from its row; a row that does not parse is a key marked invalid (refused, and
    listed as such) rather than an error that breaks every listing."""
    try:
        scope = Scope(team=row["team"], labels=dict(orjson.loads(row["labels"])),
                      models=tuple(orjson.loads(row["models"])),
                      upstreams=tuple(orjson.loads(row["upstreams"])),
                      capabilities=tuple(orjson.loads(row["capabilities"])),
                      expires_at=row["expires_at"],
                      allow_project_header=bool(row["allow_project_header"]),
                      groups=tuple(orjson.loads(row["groups"] or "[]")))
        return check_record(KeyRecord(
            id=row["id"], name=row["name"], scope=scope, created_at=row["created_at"],
            parent_id=row["parent_id"], revoked_at=row["revoked_at"],
            credentials=tuple(sorted(credentials, key=lambda c: c.created_at))))
    except (TypeError, ValueError) as exc:
        return KeyRecord(id=row["id"], name=str(row["name"]), scope=Scope(), created_at=0.0,
                         parent_id=row["parent_id"],
                         problem=f"unreadable row: {type(exc).__name__}")


class KeyStore:
    """Keys and their credentials in SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.description = db.store.masked  # for messages: never contains a password

    async def open(self) -> list[str]:
        # Opening runs the schema's DDL, which on PostgreSQL can deadlock against key writes
        # of running servers (the loser is rolled back): try again, as they do.
        async def attempt() -> list[str]:
            try:
                return await self.db.open(SCHEMA)
            except BaseException:
                await self.db.close()
                raise

        return await retrying(attempt, what=f"{LABEL}: opening", log=log, deadline=30.0)

    async def close(self) -> None:
        await self.db.close()

    @staticmethod
    async def _bump(tx: Tx) -> int:
        rows = await tx.fetch("UPDATE midway_keys_meta SET value = value + 1 "
                              "WHERE name = 'version' RETURNING value")
        return int(rows[0]["value"])

    async def version(self) -> int:
        rows = await self.db.fetch("SELECT value FROM midway_keys_meta WHERE name = 'version'")
        return int(rows[0]["value"])

    async def changes_since(self, version: int) -> tuple[int, set[str], set[str]]:
        """``(current version, changed key ids, changed credential ids)``."""
        current = await self.version()
        if current == version:
            return current, set(), set()
        keys = await self.db.fetch("SELECT id FROM midway_keys WHERE version > ?", version)
        creds = await self.db.fetch("SELECT id, key_id FROM midway_key_credentials "
                                    "WHERE version > ?", version)
        key_ids = {r["id"] for r in keys} | {r["key_id"] for r in creds}
        return current, key_ids, {r["id"] for r in creds}

    async def insert(self, record: KeyRecord, credential: Credential) -> None:
        s = record.scope

        async def unit(tx: Tx) -> None:
            # The bump takes the version row's lock, which every write takes first: a revoke
            # of the parent is either committed already (and seen here) or waits for this
            # insert and then revokes the new child with the rest.
            version = await self._bump(tx)
            if record.parent_id is not None:
                parent = await tx.fetchone("SELECT revoked_at FROM midway_keys WHERE id = ?",
                                           record.parent_id)
                if parent is None or parent["revoked_at"] is not None:
                    raise KeysError(f"parent key {record.parent_id} is revoked", 403)
            await tx.execute(
                "INSERT INTO midway_keys (id, name, team, labels, models, upstreams, "
                "capabilities, allow_project_header, parent_id, created_at, expires_at, "
                "revoked_at, version, groups) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                record.id, record.name, s.team, _dump(s.labels), _dump(list(s.models)),
                _dump(list(s.upstreams)), _dump(list(s.capabilities)),
                int(s.allow_project_header), record.parent_id, record.created_at,
                s.expires_at, None, version, _dump(list(s.groups)))
            await self._insert_credential(tx, credential, version)

        await self.db.run(unit)

    @staticmethod
    async def _insert_credential(tx: Tx, c: Credential, version: int) -> None:
        await tx.execute("INSERT INTO midway_key_credentials (id, key_id, salt, "
                         "digest, created_at, not_after, version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         c.id, c.key_id, c.salt, c.digest, c.created_at, c.not_after, version)

    async def get(self, key_id: str) -> KeyRecord | None:
        rows = await self.db.fetch(_SELECT_KEYS + " WHERE id = ?",
                                   key_id)
        if not rows:
            return None
        creds = await self.db.fetch(_SELECT_CREDENTIALS + " WHERE key_id = ?", key_id)
        return _record(rows[0], map(_credential, creds))

    async def list_keys(self, parent_id: str | None = None) -> list[KeyRecord]:
        if parent_id is None:
            rows = await self.db.fetch(_SELECT_KEYS + " ORDER BY created_at, id")
            creds = await self.db.fetch(_SELECT_CREDENTIALS)
        else:
            rows = await self.db.fetch(_SELECT_KEYS + " WHERE parent_id = ? "
                                       "ORDER BY created_at, id", parent_id)
            # Constant SQL text; the value is a bound parameter.
            children = _SELECT_CREDENTIALS + " WHERE key_id IN (SELECT id FROM midway_keys " \
                "WHERE parent_id = ?)"  # noqa: S608
            creds = await self.db.fetch(children, parent_id)
        by_key: dict[str, list[Credential]] = {}
        for row in creds:
            by_key.setdefault(row["key_id"], []).append(_credential(row))
        return [_record(r, by_key.get(r["id"], ())) for r in rows]

    async def find(self, credential_id: str) -> tuple[Credential, KeyRecord] | None:
        """A credential and its key, for authentication, read in one transaction with the
        key's ancestors (``KeyRecord.ancestors``, nearest first). A key below a revoked one is
        returned revoked whatever its own row says."""
        async def unit(tx: Tx) -> tuple[Credential, KeyRecord] | None:
            creds = await tx.fetch(_SELECT_CREDENTIALS + " WHERE id = ?", credential_id)
            if not creds:
                return None
            credential = _credential(creds[0])
            row = await tx.fetchone(_SELECT_KEYS + " WHERE id = ?", credential.key_id)
            if row is None:
                return None
            record = _record(row)
            ancestors: list[str] = []
            revoked_at = record.revoked_at
            parent_id = record.parent_id
            while parent_id is not None and parent_id not in ancestors \
                    and parent_id != record.id:
                ancestors.append(parent_id)
                parent = await tx.fetchone("SELECT parent_id, revoked_at FROM midway_keys "
                                           "WHERE id = ?", parent_id)
                if parent is None:
                    break
                if revoked_at is None and parent["revoked_at"] is not None:
                    revoked_at = parent["revoked_at"]
                parent_id = parent["parent_id"]
            return credential, attrs.evolve(record, ancestors=tuple(ancestors),
                                            revoked_at=revoked_at)

        return await self.db.run(unit)

    async def revoke(self, key_id: str, now: float) -> list[str]:
        """Revoke a key and every key derived from it; the ids newly revoked."""
        async def unit(tx: Tx) -> list[str]:
            version = await self._bump(tx)
            revoked: list[str] = []
            frontier = [key_id]
            while frontier:
                current = frontier.pop()
                rows = await tx.fetch("UPDATE midway_keys SET revoked_at = ?, version = ? "
                                      "WHERE id = ? AND revoked_at IS NULL RETURNING id",
                                      now, version, current)
                revoked.extend(r["id"] for r in rows)
                children = await tx.fetch("SELECT id FROM midway_keys WHERE parent_id = ?",
                                          current)
                frontier.extend(r["id"] for r in children)
            return revoked

        return await self.db.run(unit)

    async def rotate(self, key_id: str, credential: Credential, old_not_after: float) -> None:
        """Add ``credential``; the key's other credentials stop at ``old_not_after``."""
        async def unit(tx: Tx) -> None:
            version = await self._bump(tx)
            await tx.execute("UPDATE midway_key_credentials SET not_after = ?, version = ? "
                             "WHERE key_id = ? AND (not_after IS NULL OR not_after > ?)",
                             old_not_after, version, key_id, old_not_after)
            await tx.execute("UPDATE midway_keys SET version = ? WHERE id = ?", version, key_id)
            await self._insert_credential(tx, credential, version)

        await self.db.run(unit)

    async def update(self, key_id: str, name: str | None, labels: dict[str, str] | None
                     ) -> None:
        async def unit(tx: Tx) -> None:
            version = await self._bump(tx)
            if name is not None:
                await tx.execute("UPDATE midway_keys SET name = ? WHERE id = ?", name, key_id)
            if labels is not None:
                await tx.execute("UPDATE midway_keys SET labels = ? WHERE id = ?",
                                 _dump(labels), key_id)
            await tx.execute("UPDATE midway_keys SET version = ? WHERE id = ?", version, key_id)

        await self.db.run(unit)


def open_store(config: KeysConfig) -> KeyStore:
    """The key store ``[keys] store`` and ``[keys] schema`` name (not opened yet)."""
    return KeyStore(open_database(config.store, schema=config.schema, label=LABEL))
