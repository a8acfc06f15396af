"""A recorded session, read from the audit trail: its ``/v1/messages`` requests in order, with
the request bodies to send again and the answers to compare with.

Records are found through the store's own query layer (:meth:`AuditStore.query` with a text
filter, then :meth:`AuditStore.get` for the bodies); a record belongs to the session whose id
its ``x-claude-code-session-id`` request header (or a ``session_id`` field, where audit
records one) carries.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import orjson

from midway_audit.stores.queries import Filter
from midway_audit.stores.store import AuditStore

SESSION_HEADER = "x-claude-code-session-id"
MIN_PREFIX = 8  # characters of a session id that may stand for it (like a short git hash)
MAX_RECORDS = 100_000  # records of one search examined at most
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")
MESSAGES = "/v1/messages"


class ReplayRefused(Exception):
    """The replay cannot run; the message is one line saying why and what to do."""


@attrs.define
class Turn:
    """One recorded ``POST /v1/messages`` of the session, numbered from 1."""

    number: int
    record: dict[str, Any]  # the audit record, bodies included
    body: dict[str, Any]  # the request body, parsed
    beta: bool  # sent with ?beta=true (Claude Code's requests are)

    @property
    def answer(self) -> dict[str, Any] | None:
        """The recorded answer (the reassembled message of a stream, or the JSON answer), when
        it was recorded whole."""
        if self.record.get("response_truncated"):
            return None
        text = self.record.get("response_body")
        if not isinstance(text, str):
            return None
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None


@attrs.define
class Session:
    id: str
    turns: list[Turn]
    total: int  # the session's /v1/messages requests (turns beyond --max-turns included)
    others: int  # its other requests (count_tokens, models, …): never replayed
    interrupted: int  # requests recorded as interrupted (no outcome, no bodies): left out


def session_of(record: dict[str, Any]) -> str | None:
    """The Claude Code session a record belongs to (None: not said)."""
    value = record.get("session_id")
    if not isinstance(value, str) or not value:
        headers = record.get("request_headers")
        value = headers.get(SESSION_HEADER) if isinstance(headers, dict) else None
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if _ID.fullmatch(value) else None


def _path(record: dict[str, Any]) -> tuple[str, str]:
    path, _, query = str(record.get("path") or "").partition("?")
    return path, query


async def find_session(store: AuditStore, session: str, max_turns: int,
                       since: float | None = None) -> Session:
    """The session ``session`` names (its id, or a unique prefix of at least
    :data:`MIN_PREFIX` characters) with its first ``max_turns`` turns loaded; raises
    :class:`ReplayRefused` when it is unknown, ambiguous or has no bodies to replay."""
    session = session.strip()
    if not _ID.fullmatch(session):
        raise ReplayRefused(f"{session[:80]!r} is not a Claude Code session id (the "
                            f"{SESSION_HEADER} header: letters, digits and . _ : @ + -)")
    if len(session) < MIN_PREFIX:
        raise ReplayRefused(f"session {session!r} is too short: give the session id or at "
                            f"least its first {MIN_PREFIX} characters")
    found = await store.query(Filter.build(since=since, text=session), MAX_RECORDS)
    matches: dict[str, list[dict[str, Any]]] = {}
    for record in found:
        sid = session_of(record)
        if sid is not None and sid.startswith(session):
            matches.setdefault(sid, []).append(record)
    if session in matches:  # the whole id, also the prefix of a longer one
        matches = {session: matches[session]}
    if not matches:
        where = " since then" if since is not None else ""
        raise ReplayRefused(f"no audit records of session {session}{where} (list sessions "
                            "with `midway audit query --text <id>`; records carry the id in "
                            f"their {SESSION_HEADER} header)")
    if len(matches) > 1:
        names = ", ".join(sorted(matches)[:5])
        raise ReplayRefused(f"session {session!r} is ambiguous: {len(matches)} sessions start "
                            f"with it ({names}{', …' if len(matches) > 5 else ''}); give "
                            "more of the id")
    [(sid, records)] = matches.items()
    records.sort(key=lambda r: (float(r.get("ts") or 0), int(r.get("seq") or 0)))
    requests, others, interrupted = [], 0, 0
    for record in records:
        if record.get("interrupted"):
            interrupted += 1
        elif record.get("method") == "POST" and _path(record)[0] == MESSAGES:
            requests.append(record)
        else:
            others += 1
    if not requests:
        raise ReplayRefused(f"session {sid} has no recorded /v1/messages requests to replay")
    turns = []
    for number, summary in enumerate(requests[:max_turns], 1):
        full = await store.get(str(summary["id"]))
        turns.append(_turn(sid, number, full if full is not None else summary))
    return Session(sid, turns, len(requests), others, interrupted)


def _turn(sid: str, number: int, record: dict[str, Any]) -> Turn:
    what = f"session {sid}: turn {number} (request {record.get('id')})"
    text = record.get("request_body")
    if not isinstance(text, str):
        why = ("audit recorded no bodies ([audit] bodies = false)" if record.get("bodies") is
               False else "its bodies were deleted (older than [audit] body_max_age)")
        raise ReplayRefused(f"{what} has no request body to replay: {why}; a replay needs "
                            "the audit bodies")
    if record.get("request_truncated"):
        raise ReplayRefused(f"{what}: its request body was cut at [audit] max_body_bytes, so "
                            "it cannot be sent again")
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ReplayRefused(f"{what}: its recorded request body is not a JSON object")
    return Turn(number, record, body, "beta=true" in _path(record)[1].split("&"))
