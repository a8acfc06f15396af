"""The audit store's reading side in SQL: record filters (``midway audit query``, the
dashboard), the columns every read selects, and rows as records."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from midway.timeparse import parse_time
from midway_audit.chain import StoredRow

_STATUS_CLASS = re.compile(r"^([1-5])xx$", re.IGNORECASE)

# The columns of one stored record, in the order every store selects them.
COLUMNS = ("seq, request_id, principal, model, status, ts, data, request_body, response_body, "
           "prev_hash, hash, request_body_sha256, response_body_sha256")
SUMMARY_COLUMNS = "seq, data, prev_hash, hash"
# A request has one record; when a late real record superseded an interrupted one (see
# AuditStore.append), reads show the latest only. Both stay in the chain.
LATEST = ("NOT EXISTS (SELECT 1 FROM audit_records later WHERE later.request_id = "
          "audit_records.request_id AND later.seq > audit_records.seq)")


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

    def where(self, like: str = "LIKE") -> tuple[str, list[Any]]:
        """A SQL ``WHERE`` clause (or ``""``) with ``?`` placeholders, and its arguments;
        ``like`` is the dialect's case-insensitive LIKE (``ILIKE`` on PostgreSQL)."""
        clauses: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return "?"

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


def summary_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A record without bodies from a row of :data:`SUMMARY_COLUMNS`."""
    record: dict[str, Any] = orjson.loads(row["data"])
    record["seq"] = row["seq"]
    record["prev_hash"] = row["prev_hash"]
    record["hash"] = row["hash"]
    return record


def full_record(row: StoredRow) -> dict[str, Any]:
    record: dict[str, Any] = orjson.loads(row.data)
    record.update(seq=row.seq, prev_hash=row.prev_hash, hash=row.hash,
                  request_body=row.request_body, response_body=row.response_body)
    # bodies deleted by body retention: their digests still verify the record
    for name in ("request_body_sha256", "response_body_sha256"):
        if getattr(row, name) is not None:
            record[name] = getattr(row, name)
    return record


# Parts no record refers to any more, among the candidates (those the pruned records used).
UNREFERENCED = ("NOT EXISTS (SELECT 1 FROM audit_part_refs r "
                "WHERE r.digest = audit_parts.digest)")
