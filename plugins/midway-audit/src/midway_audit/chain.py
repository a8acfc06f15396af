"""The hash chain: how a record's hash is computed, and how a store is verified.

``hash = sha256(prev_hash || "<seq>\n" || content_digest)``, where ``prev_hash`` is the
previous record's hash as 64 hex characters (the chain's anchor for the first record kept)
and ``content_digest`` is the hex SHA-256 of ``"v2\n"`` and the stored ``data`` and the hex
SHA-256 of each of the ``request_body`` and ``response_body`` columns, each UTF-8 encoded as
a netstring (``"<length>:<bytes>,"``, or ``"~"`` for NULL). ``data`` is the record's
metadata as JSON with sorted keys. Length prefixes make the form unambiguous without escaping
the (large) bodies again, and hashing the content first keeps the work done under the chain's
lock small.

Covering the bodies through their digests lets body retention (``body_max_age``) delete a
record's bodies while keeping its digests (``request_body_sha256``/``response_body_sha256``
columns): the record, its metadata included, still verifies. Records written before this
form (version 1: the bodies themselves as netstrings, no prefix) still verify as they are;
their bodies are only deleted with the whole record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Protocol

import attrs
import orjson

from midway_audit.parts import digest as part_digest
from midway_audit.parts import digests, resplit

GENESIS = "0" * 64


def body_digest(body: str | None) -> str | None:
    """SHA-256 (hex) of a stored body column (``None`` for NULL)."""
    return None if body is None else hashlib.sha256(body.encode()).hexdigest()


def content_digest(data: str, request_body: str | None, response_body: str | None) -> str:
    """SHA-256 (hex) of a record's stored columns in their canonical form (version 2)."""
    return body_content_digest(data, body_digest(request_body), body_digest(response_body))


def body_content_digest(data: str, request_digest: str | None,
                        response_digest: str | None) -> str:
    """Version 2 from the bodies' digests (what is left once the bodies expired)."""
    return _netstrings((data, request_digest, response_digest), b"v2\n")


def content_digest_v1(data: str, request_body: str | None, response_body: str | None) -> str:
    """Version 1: records written before body retention existed."""
    return _netstrings((data, request_body, response_body), b"")


def matches(prev_hash: str, seq: int, stored_hash: str, data: str, request_body: str | None,
            response_body: str | None, request_digest: str | None = None,
            response_digest: str | None = None) -> bool:
    """Whether a record's columns give its stored hash. Expired bodies (NULL, with their
    digests kept) are covered by those digests; a record with both bodies may also be of
    version 1."""
    request_d = request_digest if request_body is None and request_digest else \
        body_digest(request_body)
    response_d = response_digest if response_body is None and response_digest else \
        body_digest(response_body)
    if link_hash(prev_hash, seq, body_content_digest(data, request_d, response_d)) == \
            stored_hash:
        return True
    expired = (request_body is None and request_digest) or \
        (response_body is None and response_digest)
    return not expired and link_hash(prev_hash, seq, content_digest_v1(
        data, request_body, response_body)) == stored_hash


def _netstrings(values: Iterable[str | None], prefix: bytes) -> str:
    digest = hashlib.sha256(prefix)
    for value in values:
        if value is None:
            digest.update(b"~")
        else:
            raw = value.encode()
            digest.update(b"%d:" % len(raw))
            digest.update(raw)
            digest.update(b",")
    return digest.hexdigest()


def link_hash(prev_hash: str, seq: int, content: str) -> str:
    """The hash of record ``seq``, chained to ``prev_hash``."""
    return hashlib.sha256(f"{prev_hash}{seq}\n{content}".encode()).hexdigest()


@attrs.define
class Head:
    """The chain's state: its last record, and the anchor that pruning left behind."""

    seq: int = 0
    hash: str = GENESIS
    anchor_seq: int = 0
    anchor_hash: str = GENESIS
    count: int = 0


@attrs.define
class StoredRow:
    seq: int
    request_id: str
    principal: str | None
    model: str | None
    status: int | None
    ts: float
    data: str
    request_body: str | None
    response_body: str | None
    prev_hash: str
    hash: str
    # the digests of bodies deleted by body retention (NULL while the bodies are kept)
    request_body_sha256: str | None = None
    response_body_sha256: str | None = None


@attrs.define
class VerifyResult:
    ok: bool
    checked: int
    head: Head
    broken_seq: int | None = None
    broken_request_id: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "head_seq": self.head.seq,
                "head_hash": self.head.hash, "anchor_seq": self.head.anchor_seq,
                "anchor_hash": self.head.anchor_hash, "broken_seq": self.broken_seq,
                "broken_request_id": self.broken_request_id, "reason": self.reason}


class ChainSource(Protocol):
    async def head(self) -> Head: ...

    async def scan(self, after_seq: int, limit: int) -> list[StoredRow]: ...

    async def parts(self, digests: list[str]) -> dict[str, str]: ...


# Columns duplicated out of ``data`` for querying; an edit to either copy must show.
_COLUMNS = (("request_id", "id"), ("principal", "principal"), ("model", "model"),
            ("status", "status"))


def check_row(row: StoredRow, expected_seq: int, expected_prev: str) -> str | None:
    """Why ``row`` breaks the chain, or ``None`` when it is intact."""
    if row.seq != expected_seq:
        return f"record(s) {expected_seq}..{row.seq - 1} missing before seq {row.seq}"
    if row.prev_hash != expected_prev:
        return "prev_hash does not match the previous record's hash"
    if not matches(row.prev_hash, row.seq, row.hash, row.data, row.request_body,
                   row.response_body, row.request_body_sha256, row.response_body_sha256):
        return "record content does not match its hash (edited)"
    try:
        data = orjson.loads(row.data)
    except orjson.JSONDecodeError:
        return "record data is not valid JSON"
    for column, key in _COLUMNS:
        if getattr(row, column) != data.get(key):
            return f"column {column} does not match the hashed record (edited)"
    if row.ts != data.get("ts"):
        return "column ts does not match the hashed record (edited)"
    return None


async def verify(source: ChainSource, page: int = 500) -> VerifyResult:
    """Walk the chain from its anchor to its head; stop at the first broken link."""
    head = await source.head()
    expected_seq = head.anchor_seq + 1
    expected_prev = head.anchor_hash
    checked = 0
    verified_parts: set[str] = set()
    while True:
        rows = await source.scan(expected_seq - 1, page)
        if not rows:
            break
        bad_parts = await _check_parts(source, rows, verified_parts)
        for row in rows:
            reason = check_row(row, expected_seq, expected_prev)
            if reason is None and bad_parts:
                reason = next((bad_parts[d] for d in digests(row.request_body)
                               if d in bad_parts), None)
            if reason is not None:
                return VerifyResult(False, checked, head, row.seq, row.request_id, reason)
            checked += 1
            expected_seq = row.seq + 1
            expected_prev = row.hash
    last_seq = expected_seq - 1
    if last_seq != head.seq:
        reason = (f"records {last_seq + 1}..{head.seq} are missing (chain head is {head.seq})"
                  if last_seq < head.seq else f"records after the chain head {head.seq}")
        return VerifyResult(False, checked, head, last_seq + 1, None, reason)
    if expected_prev != head.hash:
        return VerifyResult(False, checked, head, last_seq, None,
                            "the last record's hash does not match the chain head")
    return VerifyResult(True, checked, head)


async def _check_parts(source: ChainSource, rows: list[StoredRow], verified: set[str]
                       ) -> dict[str, str]:
    """Body parts the rows refer to that are missing or do not match their digest."""
    wanted = sorted({d for row in rows for d in digests(row.request_body)} - verified)
    if not wanted:
        return {}
    found = await source.parts(wanted)
    bad = {}
    for part in wanted:
        if part not in found:
            bad[part] = f"request body part {part[:12]}… is missing"
        elif part_digest(found[part]) != part:
            bad[part] = f"request body part {part[:12]}… does not match its digest (edited)"
    if len(verified) > 200_000:
        verified.clear()
    verified.update(d for d in wanted if d not in bad)
    return bad


_NOT_DATA = ("seq", "prev_hash", "hash", "request_body", "response_body",
             "request_body_sha256", "response_body_sha256")


def verify_exported(records: Iterable[dict[str, Any]]) -> VerifyResult:
    """Check records as the JSONL sink and ``export`` write them (full records, in seq
    order): each one's hash, and each link to the one before. The first record's
    ``prev_hash`` is taken as the anchor."""
    head = Head()
    checked = 0
    expected_seq: int | None = None
    for record in records:
        seq, prev, stored = record.get("seq"), record.get("prev_hash"), record.get("hash")
        if not isinstance(seq, int) or not isinstance(prev, str) or not isinstance(stored, str):
            return VerifyResult(False, checked, head, seq if isinstance(seq, int) else None,
                                record.get("id"), "not an audit record with seq and hashes")
        if expected_seq is None:
            head.anchor_seq, head.anchor_hash = seq - 1, prev
        elif seq != expected_seq:
            return VerifyResult(False, checked, head, seq, record.get("id"),
                                f"record(s) {expected_seq}..{seq - 1} missing before seq {seq}")
        elif prev != head.hash:
            return VerifyResult(False, checked, head, seq, record.get("id"),
                                "prev_hash does not match the previous record's hash")
        data = orjson.dumps({k: v for k, v in record.items() if k not in _NOT_DATA},
                            option=orjson.OPT_SORT_KEYS).decode()
        request_body = record.get("request_body")
        if record.get("request_parts") and isinstance(request_body, str):
            try:
                request_body = resplit(request_body)  # the form the chain covers
            except (ValueError, orjson.JSONDecodeError):
                return VerifyResult(False, checked, head, seq, record.get("id"),
                                    "request body is not the JSON object it was (edited)")
        if not matches(prev, seq, stored, data, request_body, record.get("response_body"),
                       record.get("request_body_sha256"), record.get("response_body_sha256")):
            return VerifyResult(False, checked, head, seq, record.get("id"),
                                "record content does not match its hash (edited)")
        checked += 1
        head.seq, head.hash, head.count = seq, stored, checked
        expected_seq = seq + 1
    return VerifyResult(True, checked, head)
