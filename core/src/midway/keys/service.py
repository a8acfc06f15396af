"""Operations on keys, shared by the CLI, the admin API and derived-key creation."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs

from midway.config import ConfigError
from midway.keys import tokens
from midway.keys.model import (
    CAPABILITIES,
    Credential,
    KeyRecord,
    KeysError,
    Scope,
    check_time,
    check_within,
)
from midway.keys.store import KeyStore
from midway.storage import retrying
from midway.timeparse import TIME_FORMS, parse_duration, parse_time

T = TypeVar("T")
log = logging.getLogger("midway.keys")
# How long a key write is retried through deadlocks, serialization failures and blinks of the
# database before it is reported as failed (it then changed nothing: one transaction).
WRITE_DEADLINE = 30.0


@attrs.frozen
class Issued:
    """A key with the one copy of its secret that will ever be shown."""

    record: KeyRecord
    secret: str

    def as_dict(self) -> dict[str, Any]:
        return {**self.record.as_dict(), "secret": self.secret}


def _strings(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise KeysError(f"{field} must be a list of strings")
    return tuple(v for v in value if v)


def _groups(value: Any) -> tuple[str, ...]:
    """Group names: at most 64, each 1-200 printable characters, kept unique and sorted."""
    groups = _strings(value, "groups")
    if len(groups) > 64:
        raise KeysError("groups: at most 64 groups per key")
    for group in groups:
        if len(group) > 200 or not group.isprintable() or group != group.strip():
            raise KeysError(f"groups: {group[:40]!r} is not a group name (1-200 printable "
                            "characters, no surrounding spaces)")
    return tuple(sorted(set(groups)))


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise KeysError("labels must be an object of strings")
    return dict(value)


def _text(value: Any, field: str, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise KeysError(f"{field} is required")
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise KeysError(f"{field} must be a non-empty string of at most 200 characters")
    return value.strip()


def scope_from(spec: dict[str, Any], now: float, parent: KeyRecord | None = None) -> Scope:
    """A scope from user input (CLI options or an API body), inheriting from ``parent``."""
    expires_at: float | None = None
    try:
        if spec.get("expires_in") is not None:
            expires_at = now + parse_duration(spec["expires_in"])
        if spec.get("expires_at") is not None:
            expires_at = parse_time(spec["expires_at"], now=now)
            if expires_at is None:  # "": not a time (parse_time's "no bound")
                raise ConfigError(f"expected a time ({TIME_FORMS}), got ''")
    except ConfigError as exc:
        field = "expires_at" if spec.get("expires_at") is not None else "expires_in"
        raise KeysError(f"{field}: {exc}") from None
    if expires_at is not None:
        check_time(expires_at, "expiry")
        if expires_at <= now:
            raise KeysError("expiry is in the past")
    capabilities = _strings(spec.get("capabilities"), "capabilities")
    unknown = sorted(set(capabilities) - CAPABILITIES)
    if unknown:
        raise KeysError(f"unknown capabilities {unknown}; known: {sorted(CAPABILITIES)}")
    team = _text(spec.get("team"), "team")
    labels = _labels(spec.get("labels"))
    allow_project = spec.get("allow_project_header")
    if parent is not None:
        p = parent.scope
        # A derived key starts from its parent's limits; it may narrow them, never widen.
        team = team if team is not None else p.team
        labels = {**p.labels, **labels}
        if expires_at is None:
            expires_at = p.expires_at
        if allow_project is None:
            allow_project = p.allow_project_header
    models = _strings(spec.get("models"), "models")
    groups = _groups(spec.get("groups"))
    if parent is not None and "groups" not in spec:
        groups = parent.scope.groups
    upstreams = _strings(spec.get("upstreams"), "upstreams")
    if parent is not None:
        models = models or parent.scope.models
        upstreams = upstreams or parent.scope.upstreams
    return Scope(team=team, labels=labels, models=models, upstreams=upstreams,
                 capabilities=capabilities, expires_at=expires_at, groups=groups,
                 allow_project_header=True if allow_project is None else bool(allow_project))


def _new_credential(key_id: str, now: float) -> tuple[Credential, str]:
    secret_id, secret = tokens.new_secret()
    parsed = tokens.parse(secret)
    assert parsed is not None
    salt = tokens.new_salt()
    return Credential(id=secret_id, key_id=key_id, salt=salt,
                      digest=tokens.digest(salt, parsed[1]), created_at=now), secret


class KeyService:
    def __init__(self, store: KeyStore,
                 on_change: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store = store
        # Called after every write: the local cache applies it at once instead of at its
        # next poll (other instances still rely on polling).
        self.on_change = on_change

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    async def _write(self, work: Callable[[], Awaitable[T]], what: str) -> T:
        """A write retried while it fails transiently (a deadlock or serialization failure on
        PostgreSQL, a busy SQLite file): each attempt is a whole transaction, so a write either
        lands or is reported failed having changed nothing."""
        return await retrying(work, what=f"keys: {what}", log=log, deadline=WRITE_DEADLINE)

    async def create(self, spec: dict[str, Any], parent_id: str | None = None) -> Issued:
        """Issue a key. With ``parent_id`` it is derived: its scope must lie within the
        parent's, and revoking the parent revokes it."""
        now = time.time()
        name = _text(spec.get("name"), "name", required=True)
        assert name is not None
        parent: KeyRecord | None = None
        if parent_id is not None:
            parent = await self.store.get(parent_id)
            if parent is None:
                raise KeysError(f"no key {parent_id!r}", 404)
            if parent.status(now) != "active":
                raise KeysError(f"parent key {parent_id} is {parent.status(now)}", 403)
        scope = scope_from(spec, now, parent)
        if parent is not None:
            check_within(scope, parent.scope)
        key_id = tokens.new_key_id()
        credential, secret = _new_credential(key_id, now)
        record = KeyRecord(id=key_id, name=name, scope=scope, created_at=now,
                           parent_id=parent_id, credentials=(credential,))
        await self._write(lambda: self.store.insert(record, credential),
                          f"creating key {key_id}")
        await self._changed()
        return Issued(record, secret)

    async def get(self, key_id: str) -> KeyRecord:
        record = await self.store.get(key_id)
        if record is None:
            raise KeysError(f"no key {key_id!r}", 404)
        return record

    async def list_keys(self, parent_id: str | None = None) -> list[KeyRecord]:
        return await self.store.list_keys(parent_id)

    async def revoke(self, key_id: str) -> KeyRecord:
        await self.get(key_id)
        await self._write(lambda: self.store.revoke(key_id, time.time()), f"revoking {key_id}")
        await self._changed()
        return await self._write(lambda: self.get(key_id), f"reading {key_id}")

    async def rotate(self, key_id: str, grace: float = 0.0) -> Issued:
        """A new secret for the same key (same id, scope and spend history); the old
        secrets keep working for ``grace`` seconds."""
        if not grace >= 0:  # NaN too
            raise KeysError("grace must not be negative")
        now = time.time()
        check_time(now + grace, "the end of the grace period")
        record = await self.get(key_id)
        if record.status(now) != "active":
            raise KeysError(f"key {key_id} is {record.status(now)}", 409)
        credential, secret = _new_credential(key_id, now)
        await self._write(lambda: self.store.rotate(key_id, credential, now + grace),
                          f"rotating {key_id}")
        await self._changed()
        return Issued(await self.get(key_id), secret)

    async def update(self, key_id: str, spec: dict[str, Any]) -> KeyRecord:
        """Rename or relabel a key (its scope is fixed: issue a new key to change it)."""
        record = await self.get(key_id)
        unknown = sorted(set(spec) - {"name", "labels"})
        if unknown:
            raise KeysError(f"only name and labels can change, not {unknown}")
        labels = _labels(spec["labels"]) if "labels" in spec else None
        if labels is not None and record.parent_id is not None:
            parent = await self.get(record.parent_id)
            check_within(attrs.evolve(record.scope, labels=labels), parent.scope)
        name = _text(spec.get("name"), "name")
        await self._write(lambda: self.store.update(key_id, name, labels), f"updating {key_id}")
        await self._changed()
        return await self.get(key_id)

    async def is_descendant(self, key_id: str, ancestor_id: str) -> bool:
        record = await self.store.get(key_id)
        seen: set[str] = set()
        while record is not None and record.parent_id is not None \
                and record.id not in seen:
            if record.parent_id == ancestor_id:
                return True
            seen.add(record.id)
            record = await self.store.get(record.parent_id)
        return False
