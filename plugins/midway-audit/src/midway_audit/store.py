"""What every audit store offers, and the query filters they share."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import attrs
import orjson

from midway_audit.chain import Head, StoredRow
from midway_audit.config import AuditConfig
from midway_audit.parts import digests, expand
from midway_audit.record import Row

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_STATUS_CLASS = re.compile(r"^([1-5])xx$", re.IGNORECASE)

# The columns of one stored record, in the order every store selects them.
COLUMNS = ("seq, request_id, principal, model, status, ts, data, request_body, response_body, "
           "prev_hash, hash")
SUMMARY_COLUMNS = "seq, data, prev_hash, hash"


def parse_time(value: Any) -> float | None:
    """An instant: ``datetime``, epoch seconds, ISO 8601, or relative (``15m`` = 15 min ago)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    match = _RELATIVE.match(text)
    if match:
        return time.time() - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601, epoch seconds or e.g. 15m, 2h, "
                         "7d)") from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed.timestamp()


def parse_status(value: Any) -> tuple[int, int] | None:
    """``200`` → (200, 200); ``"5xx"`` → (500, 599); ``"error"`` → (400, 599)."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value, value
    text = str(value).strip()
    if text.lower() == "error":
        return 400, 599
    match = _STATUS_CLASS.match(text)
    if match:
        low = int(match.group(1)) * 100
        return low, low + 99
    try:
        code = int(text)
    except ValueError:
        raise ValueError(f"not a status: {text!r} (use e.g. 200, 4xx, error)") from None
    return code, code


@attrs.define
class Filter:
    since: float | None = None
    until: float | None = None
    principal: str | None = None
    model: str | None = None
    status: tuple[int, int] | None = None
    text: str | None = None

    @classmethod
    def build(cls, since: Any = None, until: Any = None, principal: str | None = None,
              model: str | None = None, status: Any = None, text: str | None = None) -> Filter:
        return cls(parse_time(since), parse_time(until), principal or None, model or None,
                   parse_status(status), text or None)

    def where(self, placeholder: Any, like: str = "LIKE") -> tuple[str, list[Any]]:
        """A SQL ``WHERE`` clause (or ``""``) and its arguments; ``placeholder(n)`` names
        argument ``n`` (1-based) in the store's dialect."""
        clauses: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return str(placeholder(len(args)))

        if self.since is not None:
            clauses.append(f"ts >= {arg(self.since)}")
        if self.until is not None:
            clauses.append(f"ts < {arg(self.until)}")
        if self.principal is not None:
            clauses.append(f"principal = {arg(self.principal)}")
        if self.model is not None:
            clauses.append(f"model = {arg(self.model)}")
        if self.status is not None:
            low, high = self.status
            clauses.append(f"status BETWEEN {arg(low)} AND {arg(high)}")
        if self.text is not None:
            escaped = self.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like_text = f"%{escaped}%"
            matches = [f"{column} {like} {arg(like_text)} ESCAPE '\\'"
                       for column in ("data", "request_body", "response_body")]
            # the large pieces of request bodies are stored once, in audit_parts
            in_parts = (f"p.body {like} {arg(like_text)} ESCAPE '\\'")
            matches.append("seq IN (SELECT r.seq FROM audit_part_refs r JOIN audit_parts p "  # noqa: S608
                           f"ON p.digest = r.digest WHERE {in_parts})")
            clauses.append("(" + " OR ".join(matches) + ")")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def summary_record(seq: int, data: str, prev_hash: str, hash_: str) -> dict[str, Any]:
    record: dict[str, Any] = orjson.loads(data)
    record["seq"] = seq
    record["prev_hash"] = prev_hash
    record["hash"] = hash_
    return record


def full_record(row: StoredRow) -> dict[str, Any]:
    record = summary_record(row.seq, row.data, row.prev_hash, row.hash)
    record["request_body"] = row.request_body
    record["response_body"] = row.response_body
    return record


# Parts no record refers to any more, among the candidates (those the pruned records used).
UNREFERENCED = ("NOT EXISTS (SELECT 1 FROM audit_part_refs r "
                "WHERE r.digest = audit_parts.digest)")


class KnownParts:
    """Digests of parts this process has seen committed, so repeated parts (most of every
    Claude Code request) are not written again. Forgotten whenever the chain's anchor moves:
    pruning may have deleted parts no record refers to any more."""

    LIMIT = 200_000

    def __init__(self) -> None:
        self._digests: set[str] = set()
        self._anchor: int | None = None

    def check(self, anchor_seq: int) -> None:
        if anchor_seq != self._anchor:
            self._digests.clear()
            self._anchor = anchor_seq

    def __contains__(self, digest: object) -> bool:
        return digest in self._digests

    def add(self, digests: Iterable[str]) -> None:
        if len(self._digests) > self.LIMIT:
            self._digests.clear()
        self._digests.update(digests)


async def expand_rows(rows: list[StoredRow],
                      fetch: Callable[[list[str]], Awaitable[dict[str, str]]]) -> None:
    """Replace request-body templates by the whole bodies (see parts.py), in place."""
    wanted = sorted({d for row in rows for d in digests(row.request_body)})
    if not wanted:
        return
    found = await fetch(wanted)
    for row in rows:
        row.request_body = expand(row.request_body, found)


class Store(Protocol):
    """An audit store: appends extend the hash chain atomically, one transaction per batch."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(self, rows: list[Row], retrying: bool = False) -> Head:
        """Chain and commit ``rows``; return the head after the commit. With ``retrying``,
        rows whose request id is already stored (an earlier, ambiguous commit) are skipped."""
        ...

    async def query(self, filt: Filter, limit: int) -> list[dict[str, Any]]:
        """Records without bodies, newest first."""
        ...

    async def get(self, request_id: str) -> dict[str, Any] | None: ...

    async def after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        """Records (without bodies) with a seq above ``seq``, oldest first (for ``tail``)."""
        ...

    async def head(self) -> Head: ...

    async def scan(self, after_seq: int, limit: int) -> list[StoredRow]:
        """Rows as stored (request bodies as templates), for verification."""
        ...

    async def parts(self, digests: list[str]) -> dict[str, str]:
        """Stored body parts by digest (those that exist)."""
        ...

    async def scan_filtered(self, filt: Filter, after_seq: int, limit: int
                            ) -> list[StoredRow]:
        """Matching rows with whole bodies, oldest first (for export)."""
        ...

    async def prune(self, max_age: float | None, max_rows: int | None) -> int:
        """Delete the oldest records; the last deleted one's hash becomes the anchor."""
        ...

    async def claim(self, instance: int) -> None:
        """Hold ``instance``'s liveness lock until ``close`` (an OS file lock or a PostgreSQL
        session lock: a killed process loses it), so recovery leaves its intents alone."""
        ...

    async def intend(self, instance: int, intents: list[tuple[str, float, str]]) -> None:
        """Commit intents (request id, ts, metadata JSON) of ``instance``, one transaction.
        ``append`` deletes a record's intent in the transaction that writes the record."""
        ...

    async def recover(self, instance: int, build: Callable[[list[str]], list[Row]]) -> int:
        """Append ``build(intents)`` for the intents of every dead instance other than
        ``instance`` (skipping requests already recorded) and delete those intents; return
        how many records were appended."""
        ...


def open_store(config: AuditConfig, data_dir: Path, inline: bool = False) -> Store:
    """The configured store; ``inline``: SQLite calls block the caller (the writer process)."""
    if config.is_postgres:
        from midway_audit.pg_store import PostgresStore
        return PostgresStore(config.store, config.schema)
    from midway_audit.sqlite_store import SQLiteStore
    return SQLiteStore(config.sqlite_path(data_dir), config.sqlite_synchronous, inline)
