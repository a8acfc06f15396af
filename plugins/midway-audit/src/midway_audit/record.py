"""One audit record: captured from the exchange on the relay (metadata as JSON, the bodies as
the bytes it already holds), then, in the writer process, prepared for the store (parsing,
reassembly, redaction, truncation, serialisation)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs
import orjson

from midway.annotations import CACHE, COST_USD, ROUTE
from midway.exchange import Exchange, Usage
from midway_audit.assemble import EventLog, reassemble
from midway_audit.chain import content_digest
from midway_audit.parts import expand, full_text, template
from midway_audit.redact import Redactor

UNPARSED: Any = object()  # the body was not parsed on the relay's path: prepare parses it
TRUNCATION_MARKER = "…[midway-audit: truncated {omitted} bytes]"
# Tuples, not unions: a union in an isinstance call is built at every call (these walk every
# value of a record's metadata).
_SEQUENCES = (list, tuple)
_SCALARS = (bool, int, float)


@attrs.define(slots=True)
class Pending:
    """What post_response hands to the writer: references, nothing copied or encoded yet."""

    meta: dict[str, Any]
    headers: list[tuple[str, str]]
    request_body: bytes  # kept even without bodies: the model may have to be read from it
    request_json: Any  # the parsed body when the core or a plugin parsed it, else UNPARSED
    response_body: bytes | None
    response_events: EventLog | None  # a stream's events, reassembled in prepare
    ring_end: int = 0  # where its frame ends in the hand-off ring (writer process)
    replay: bool = False  # read again after a writer was killed: it may be stored already
    response_cut: bool = False  # response_body is only the start of the answer (the relay's)
    # Whether the request's write-ahead intent may be in the store (or may have become an
    # interrupted record there): ``False`` only when this writer dropped it unwritten.
    intent_stored: bool = True

    @property
    def size(self) -> int:
        """Roughly the memory this record holds on to (its bodies), for the queue's bound."""
        size = 1024 + len(self.request_body) * 2  # the bytes and their parsed form
        if self.response_body is not None:
            size += len(self.response_body)
        if self.response_events is not None:
            size += self.response_events.size
        return size


@attrs.define(slots=True)
class Row:
    """A record ready to be chained: the stored columns, minus seq and the hashes."""

    ts: float
    request_id: str
    upstream_request_id: str | None
    principal: str
    model: str | None
    status: int | None
    data: str  # the record without bodies: canonical JSON (sorted keys)
    request_body: str | None
    response_body: str | None
    # chain.content_digest of the columns, computed outside the chain's lock
    content: str
    # the parts request_body (a template) refers to: digest -> text (see parts.py)
    parts: dict[str, str] = attrs.field(factory=dict)
    # False: no intent of this request was ever committed (see Pending.intent_stored), so
    # the store neither deletes one nor looks for an earlier record of the request
    intent_stored: bool = True
    # set by the store when the row is chained
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""

    def record(self) -> dict[str, Any]:
        """The full record as ``get`` returns it (and as the JSONL sink writes it)."""
        record: dict[str, Any] = orjson.loads(self.data)
        record.update(seq=self.seq, prev_hash=self.prev_hash, hash=self.hash,
                      request_body=expand(self.request_body, self.parts),
                      response_body=self.response_body)
        return record


# The record frame's metadata is a JSON array in this order (cheaper for the relay to build
# and encode than an object); the writer process names the fields (``received``).
CAPTURED = ("id", "upstream_request_id", "ts", "principal", "principal_name", "team",
            "principal_kind", "client_address", "agent_id", "parent_agent_id", "method", "path",
            "query", "model", "response_model", "upstream", "upstream_key", "attempts", "status",
            "stop_reason", "error", "error_type", "client_disconnected", "answered_by",
            "streaming", "ttfb_ms", "upstream_ttfb_ms", "total_ms", "usage", "annotations",
            "headers", "response", "stream_truncated", "audit_problem")
COMPACT_PATH = 256  # characters of path and query kept of an unauthenticated request
_ATTEMPT = ("number", "upstream", "status", "error", "retried", "request_id")


def capture(exchange: Exchange, bodies: bool) -> tuple[bytes, bytes, bytes]:
    """A finished exchange as a record frame's parts for the writer process (frames.RECORD):
    its metadata, the request body and the response (both the bytes already in hand). This
    runs on the relay's path for every request: it only reads fields; naming, rounding and
    deriving happen in the writer (``received``).

    A request nobody known made (``exchange.unauthenticated``) is recorded compactly: no
    bodies, no headers, the path and query cut short — its sender chose all of them."""
    principal = exchange.principal
    upstream = exchange.upstream
    timings = exchange.timings
    usage = exchange.usage
    request = exchange.request
    response: bytes | None = None
    kind = "none"
    truncated = False
    compact = exchange.unauthenticated
    # parsing a large body costs the relay: left to the writer unless already done
    model = exchange.model if request.parsed else None
    if bodies and not compact:
        kept = exchange.kept_stream
        if kept is not None:
            response, kind, truncated = kept.value(), "stream", kept.truncated
        elif exchange.response_body is not None:
            # an answer over the relay's buffer limit: only its start is kept
            response, kind, truncated = exchange.response_body, "json", \
                exchange.response_body_truncated
    values = [
        exchange.id, exchange.upstream_request_id, timings.started_at, principal.id,
        principal.name, principal.team, principal.kind, exchange.client_address,
        exchange.agent_id, exchange.parent_agent_id,
        request.method[:16], request.path[:COMPACT_PATH] if compact else request.path,
        request.query_string[:COMPACT_PATH] if compact else request.query_string,
        model[:COMPACT_PATH] if compact and model else model,
        exchange.response_model,
        upstream.name if upstream is not None else None,
        upstream.key_id if upstream is not None else None,
        [(a.number, a.upstream.name, a.status, a.error, a.retried, a.request_id)
         for a in exchange.attempts],
        exchange.status, exchange.stop_reason, exchange.error, exchange.error_type,
        exchange.client_disconnected, exchange.answered_by, exchange.streaming,
        timings.ttfb_ms, timings.upstream_ttfb_ms, timings.total_ms,
        usage.raw if usage.seen else None, exchange.annotations,
        [] if compact else list(request.headers.items()), kind, truncated, None]
    try:
        data = orjson.dumps(values, default=str)
    except Exception as exc:
        # One odd record must still be recorded: plainly, and saying so.
        data = orjson.dumps(plain(values, type(exc).__name__), default=str)
    return data, b"" if compact else request.body, response or b""


def received(data: bytes, request_body: bytes, response: bytes, max_body: int) -> Pending:
    """A record frame, read by the writer process, as a :class:`Pending`."""
    fields = dict(zip(CAPTURED, orjson.loads(data), strict=True))
    kind = fields.pop("response")
    truncated = bool(fields.pop("stream_truncated"))
    headers = [(str(k), str(v)) for k, v in fields.pop("headers") or ()]
    problem = fields.pop("audit_problem")
    join_query(fields)
    fields["attempts"] = [dict(zip(_ATTEMPT, a, strict=True)) for a in fields["attempts"]]
    for key in ("ttfb_ms", "upstream_ttfb_ms", "total_ms"):
        fields[key] = _ms(fields[key])
    raw_usage = fields["usage"]
    if raw_usage is not None:
        usage = Usage()
        usage.update(raw_usage)
        fields["usage"] = usage.as_dict()
    annotations = fields["annotations"]
    for key in (COST_USD, CACHE, ROUTE):
        fields[key] = _str_or_none(annotations.get(key))
    if problem is not None:
        fields["audit_problem"] = problem
    events = None
    response_body: bytes | None = None
    if kind == "stream":
        events = EventLog.from_sse(response, max_body, truncated)
    elif kind == "json":
        response_body = response
    return Pending(fields, headers, request_body, UNPARSED, response_body, events,
                   response_cut=truncated and kind == "json")


def join_query(fields: dict[str, Any]) -> None:
    """The relay sends the path and the query string apart (no join on its path): the
    record's ``path`` is the two together, as the client sent them."""
    query = fields.pop("query")
    if query:
        fields["path"] = f"{fields['path']}?{query}"


def prepare(pending: Pending, redactor: Redactor, max_body: int, bodies: bool) -> Row:
    """Redact, cut and serialise a captured record. Nothing unredacted leaves this function."""
    meta = pending.meta
    parsed = pending.request_json
    if parsed is UNPARSED:
        parsed = _parse(pending.request_body)
        if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
            meta["model"] = parsed["model"]
    request_body = response_body = None
    parts: dict[str, str] = {}
    if bodies:
        request_body, meta["request_truncated"], parts = _request_text(
            pending.request_body, parsed, redactor, max_body)
        meta["request_parts"] = bool(parts)
        raw = pending.response_body
        events = pending.response_events
        if events is not None:
            raw = orjson.dumps(reassemble(events.data, max_body, events.truncated))
        response_body, cut = _body_text(raw, redactor, max_body)
        meta["response_truncated"] = cut or pending.response_cut
    meta["bodies"] = bodies
    meta["time"] = datetime.fromtimestamp(meta["ts"], UTC).isoformat(timespec="milliseconds")
    headers: dict[str, str] = {}
    for name, value in pending.headers:
        if redactor.keep_header(name):
            lower = name.lower()
            headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
    meta["request_headers"] = headers
    data, read_back = redacted_json(meta, redactor)
    # the indexed columns, as redacted as the record
    clean = read_back if read_back is not None else meta
    status = meta["status"] if isinstance(meta["status"], int) else None
    return Row(ts=float(meta["ts"]), request_id=str(clean["id"]),
               upstream_request_id=_str_or_none(clean["upstream_request_id"]),
               principal=str(clean["principal"]), model=_str_or_none(clean["model"]),
               status=status, data=data, request_body=request_body,
               response_body=response_body, parts=parts,
               content=content_digest(data, request_body, response_body),
               intent_stored=pending.intent_stored)


def plain(values: list[Any], problem: str) -> list[Any]:
    """A copy of a record frame's metadata that always serialises: annotations left out,
    every string made valid UTF-8, and the problem said."""
    return list(_without_annotations(dict(zip(CAPTURED, values, strict=True)), problem).values())


def plain_pending(pending: Pending, problem: str) -> Pending:
    """The same for a record whose preparation failed in the writer."""
    headers = [(str(_valid_utf8(k)), str(_valid_utf8(v))) for k, v in pending.headers]
    return Pending(_without_annotations(pending.meta, problem), headers, pending.request_body,
                   None, pending.response_body, pending.response_events, pending.response_cut)


def _without_annotations(meta: dict[str, Any], problem: str) -> dict[str, Any]:
    clean: dict[str, Any] = _valid_utf8({**meta, "annotations": {}})  # the fields' order kept
    clean["audit_problem"] = f"prepared without annotations: {problem}"
    return clean


def _valid_utf8(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(_valid_utf8(k)): _valid_utf8(v) for k, v in value.items()}
    if isinstance(value, _SEQUENCES):
        return [_valid_utf8(v) for v in value]
    if value is None or isinstance(value, _SCALARS):
        return value
    return _valid_utf8(str(value))


def redacted_json(meta: dict[str, Any], redactor: Redactor) -> tuple[str, Any]:
    """The metadata as canonical JSON, redacted in one pass over its text (patterns never
    span a quote, so the text stays valid JSON; per value if a match ever broke it), and,
    when a pattern matched, that JSON read back (``None``: nothing was masked)."""
    text = orjson.dumps(meta, option=orjson.OPT_SORT_KEYS, default=str).decode()
    redacted = redactor.text(text)
    if redacted == text:
        return text, None
    try:
        return redacted, orjson.loads(redacted)
    except orjson.JSONDecodeError:
        clean = _redact_values(orjson.loads(text), redactor)
        return orjson.dumps(clean, option=orjson.OPT_SORT_KEYS).decode(), clean


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def _request_text(raw: bytes, parsed: Any, redactor: Redactor, max_body: int
                  ) -> tuple[str | None, bool, dict[str, str]]:
    """The request body to store: a template and its parts, or (when it is not a JSON
    object, or too long and so cut) plain text."""
    if not isinstance(parsed, dict):
        return (*_body_text(raw, redactor, max_body), {})
    segs = redactor.json_body(parsed)
    if sum(len(text) for text, _ in segs) * 4 > max_body:  # UTF-8: at most 4 bytes a char
        text, truncated = _cut(full_text(segs), max_body)
        if truncated:
            return text, True, {}
    parts = {d: text for text, d in segs if d is not None}
    return template(segs), False, parts


def _body_text(raw: bytes | None, redactor: Redactor, max_body: int) -> tuple[str | None, bool]:
    if raw is None:
        return None, False
    return _cut(redactor.text(raw.decode("utf-8", "replace")), max_body)


def _cut(text: str, max_body: int) -> tuple[str, bool]:
    # Redact first, cut second: a cut must never leave the first half of a secret behind.
    encoded = text.encode()
    if len(encoded) <= max_body:
        return text, False
    kept = encoded[:max_body].decode("utf-8", "ignore")
    return kept + TRUNCATION_MARKER.format(omitted=len(encoded) - len(kept.encode())), True


def _redact_values(value: Any, redactor: Redactor) -> Any:
    """Redact every string in the (small) metadata, keeping its JSON structure intact."""
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, dict):
        return {str(k): _redact_values(v, redactor) for k, v in value.items()}
    if isinstance(value, _SEQUENCES):
        return [_redact_values(v, redactor) for v in value]
    if value is None or isinstance(value, _SCALARS):
        return value
    return redactor.text(str(value))


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
