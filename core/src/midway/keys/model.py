"""Keys as records: what a key may do (its scope), its credentials, and their JSON form."""

from __future__ import annotations

import fnmatch
import math
import time
from datetime import UTC, datetime
from typing import Any

import attrs

from midway.exchange import Principal
from midway.keys.tokens import visible_prefix

CAPABILITIES = frozenset({"keys:create"})
# Every time a key holds is printable as an ISO date (years 1970-9999): a later one is refused
# on input, and one found in the store makes its row invalid, never the listing.
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


class KeysError(ValueError):
    """A request about keys that cannot be honoured; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class Scope:
    """What a key may do. Empty ``models``/``upstreams`` mean any."""

    team: str | None = None
    labels: dict[str, str] = attrs.field(factory=dict)
    models: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    expires_at: float | None = None
    allow_project_header: bool = True
    # Groups the key's principal belongs to (service accounts, CI): group policy applies to
    # it as to a signed-in member of those groups (spend limits, budgets, routes).
    groups: tuple[str, ...] = ()


@attrs.frozen
class Credential:
    """One secret of a key (a key has two while a rotation's grace period runs)."""

    id: str
    key_id: str
    salt: bytes = attrs.field(repr=False)
    digest: bytes = attrs.field(repr=False)
    created_at: float
    not_after: float | None = None

    def active(self, now: float) -> bool:
        return self.not_after is None or now < self.not_after

    def as_dict(self) -> dict[str, Any]:
        return {"prefix": visible_prefix(self.id), "created_at": iso(self.created_at),
                "expires_at": iso(self.not_after)}


@attrs.frozen
class KeyRecord:
    id: str
    name: str
    scope: Scope
    created_at: float
    parent_id: str | None = None
    revoked_at: float | None = None
    credentials: tuple[Credential, ...] = ()
    problem: str | None = None  # why the stored row is unusable: the key is "invalid"
    # The keys it was derived from, nearest first (filled in for authentication only).
    ancestors: tuple[str, ...] = ()

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.problem is not None:
            return "invalid"
        if self.revoked_at is not None:
            return "revoked"
        if self.scope.expires_at is not None and now >= self.scope.expires_at:
            return "expired"
        return "active"

    def principal(self, credential: Credential) -> Principal:
        s = self.scope
        return Principal(id=self.id, name=self.name, team=s.team, kind="key",
                         key_id=visible_prefix(credential.id), labels=dict(s.labels),
                         models=s.models, upstreams=s.upstreams,
                         allow_project_header=s.allow_project_header,
                         ancestors=self.ancestors, groups=s.groups)

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        """The public form of a key: never a secret, nor a hash of one. An invalid key has
        ``status`` "invalid", a ``problem``, and no time that cannot be shown."""
        now = time.time() if now is None else now
        s = self.scope
        data: dict[str, Any] = {
            "id": self.id, "name": self.name, "team": s.team, "labels": dict(s.labels),
            "models": list(s.models), "upstreams": list(s.upstreams),
            "capabilities": list(s.capabilities), "groups": list(s.groups),
            "allow_project_header": s.allow_project_header, "parent_id": self.parent_id,
            "status": self.status(now), "created_at": iso(self.created_at),
            "expires_at": iso(s.expires_at), "revoked_at": iso(self.revoked_at),
            "credentials": [c.as_dict() for c in self.credentials if c.active(now)],
        }
        if self.problem is not None:
            data["problem"] = self.problem
        return data


def iso(ts: float | None) -> str | None:
    """``ts`` as an ISO date-time; ``None`` for no time, or one no date can show (the key
    holding it is invalid: see :func:`check_record`)."""
    if ts is None:
        return None
    try:
        value = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, ValueError, OSError, TypeError):
        return None
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def check_time(ts: float, what: str) -> float:
    """``ts`` when it is a time a key may hold (1970 to the end of 9999), else KeysError."""
    if not math.isfinite(ts) or not 0 <= ts <= MAX_TIME:
        raise KeysError(f"{what} must lie between 1970 and 9999")
    return ts


def check_record(record: KeyRecord) -> KeyRecord:
    """``record``, marked invalid when a stored time is out of range (written before times
    were checked, or by hand): the key is refused and shown as invalid."""
    times = [("created_at", record.created_at), ("expires_at", record.scope.expires_at),
             ("revoked_at", record.revoked_at),
             *(("credential not_after", c.not_after) for c in record.credentials),
             *(("credential created_at", c.created_at) for c in record.credentials)]
    for what, ts in times:
        if ts is None:
            continue
        try:
            check_time(float(ts), what)
        except (KeysError, TypeError, ValueError):
            return attrs.evolve(record, problem=f"{what} out of range: {str(ts)[:40]}")
    return record


def _glob_within(child: str, parent: str) -> bool:
    """Whether every model ``child`` matches is matched by ``parent`` too.

    Decided only for globs made of literal characters and ``*`` (then matching the child's
    text against the parent's pattern is exact); ``?`` and ``[...]`` must be repeated as is.
    """
    if child == parent:
        return True
    if any(c in "?[]" for c in child + parent):
        return False
    return fnmatch.fnmatchcase(child, parent)


def check_within(child: Scope, parent: Scope) -> None:
    """Refuse a derived key that could do anything its parent cannot."""
    if child.team != parent.team:
        raise KeysError(f"a derived key belongs to its parent's team ({parent.team!r})", 403)
    for name, value in parent.labels.items():
        if child.labels.get(name) != value:
            raise KeysError(f"a derived key keeps its parent's label {name!r}", 403)
    if parent.models:
        if not child.models:
            raise KeysError("the parent key is limited to some models: list them", 403)
        for glob in child.models:
            if not any(_glob_within(glob, p) for p in parent.models):
                raise KeysError(f"model pattern {glob!r} is beyond the parent key's models", 403)
    if parent.upstreams:
        if not child.upstreams:
            raise KeysError("the parent key is limited to some upstreams: list them", 403)
        extra = sorted(set(child.upstreams) - set(parent.upstreams))
        if extra:
            raise KeysError(f"upstreams {extra} are beyond the parent key's", 403)
    if child.groups != parent.groups:
        # Groups carry policy both ways (a group's spend limit restricts, its routes grant):
        # a derived key can neither drop one nor add one.
        raise KeysError(f"a derived key keeps its parent's groups ({list(parent.groups)})",
                        403)
    extra = sorted(set(child.capabilities) - set(parent.capabilities))
    if extra:
        raise KeysError(f"capabilities {extra} are beyond the parent key's", 403)
    if parent.expires_at is not None and (child.expires_at is None
                                          or child.expires_at > parent.expires_at):
        raise KeysError("a derived key cannot outlive its parent key", 403)
    if child.allow_project_header and not parent.allow_project_header:
        raise KeysError("the parent key may not set the project header", 403)
    # The projects a key may bill to are part of its scope: its ``project`` label, or any
    # project when it may name one in the project header.
    project = child.labels.get("project")
    if project is not None and project != parent.labels.get("project") \
            and not parent.allow_project_header:
        raise KeysError(f"project {project!r} is beyond the parent key's projects", 403)
