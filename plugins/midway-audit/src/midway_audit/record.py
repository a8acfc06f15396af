"""One audit record: captured from the exchange on the relay (metadata as JSON, the bodies as
the bytes it already holds), then, in the writer process, prepared for the store (parsing,
reassembly, redaction, truncation, serialisation)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs
import orjson

from midway import Exchange
from midway_audit.assemble import EventLog, reassemble
from midway_audit.chain import content_digest
from midway_audit.frames import RECORD, frame
from midway_audit.parts import expand, full_text, template
from midway_audit.redact import Redactor

UNPARSED: Any = object()  # the body was not parsed on the relay's path: prepare parses it
TRUNCATION_MARKER = "…[midway-audit: truncated {omitted} bytes]"


@attrs.define(slots=True)
class Pending:
    """What post_response hands to the writer: references, nothing copied or encoded yet."""

    meta: dict[str, Any]
    headers: list[tuple[str, str]]
    request_body: bytes  # kept even without bodies: the model may have to be read from it
    request_json: Any  # the parsed body when the core or a plugin parsed it, else UNPARSED
    response_body: bytes | None
    response_events: EventLog | None  # a stream's events, reassembled in prepare

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


def capture(exchange: Exchange, bodies: bool) -> list[bytes]:
    """A finished exchange as a record frame for the writer process (frames.RECORD)."""
    principal = exchange.principal
    upstream = exchange.upstream
    timings = exchange.timings
    usage = exchange.usage
    annotations = exchange.annotations
    request = exchange.request
    meta: dict[str, Any] = {
        "id": exchange.id,
        "upstream_request_id": exchange.upstream_request_id,
        "ts": timings.started_at,
        "principal": principal.id,
        "principal_name": principal.name,
        "team": principal.team,
        "principal_kind": principal.kind,
        "client_address": exchange.client_address,
        "method": request.method,
        "path": request.path_qs,
        # parsing a large body costs the relay: left to the writer unless already done
        "model": exchange.model if request.parsed else None,
        "response_model": exchange.response_model,
        "upstream": upstream.name if upstream is not None else None,
        "upstream_key": upstream.key_id if upstream is not None else None,
        "attempts": [{"number": a.number, "upstream": a.upstream.name, "status": a.status,
                      "error": a.error, "retried": a.retried, "request_id": a.request_id}
                     for a in exchange.attempts],
        "status": exchange.status,
        "stop_reason": exchange.stop_reason,
        "error": exchange.error,
        "error_type": exchange.error_type,
        "client_disconnected": exchange.client_disconnected,
        "answered_by": exchange.answered_by,
        "streaming": exchange.streaming,
        "ttfb_ms": _ms(timings.ttfb_ms),
        "upstream_ttfb_ms": _ms(timings.upstream_ttfb_ms),
        "total_ms": _ms(timings.total_ms),
        "usage": usage.as_dict() if usage.seen else None,
        "cost_usd": _str_or_none(annotations.get("cost_usd")),
        "cache": _str_or_none(annotations.get("cache")),
        "route": _str_or_none(annotations.get("route")),
        "annotations": annotations,
    }
    response: bytes | None = None
    kind = "none"
    if bodies:
        if exchange.kept_stream is not None:
            response, kind = exchange.stream_body, "stream"
        elif exchange.response_body is not None:
            response, kind = exchange.response_body, "json"
    message = {"meta": meta, "headers": list(request.headers.items()), "response": kind,
               "stream_truncated": exchange.stream_truncated}
    try:
        data = orjson.dumps(message, default=str)
    except Exception as exc:
        # One odd record must still be recorded: plainly, and saying so.
        data = orjson.dumps(plain(message, type(exc).__name__), default=str)
    return frame(RECORD, data, request.body, response or b"")


def received(message: dict[str, Any], request_body: bytes, response: bytes,
             max_body: int) -> Pending:
    """A record frame, read by the writer process, as a :class:`Pending`."""
    kind = message.get("response")
    events = None
    response_body: bytes | None = None
    if kind == "stream":
        events = EventLog.from_sse(response, max_body, bool(message.get("stream_truncated")))
    elif kind == "json":
        response_body = response
    headers = [(str(k), str(v)) for k, v in message.get("headers") or ()]
    return Pending(message["meta"], headers, request_body, UNPARSED, response_body, events)


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
        response_body, meta["response_truncated"] = _body_text(raw, redactor, max_body)
    meta["bodies"] = bodies
    meta["time"] = datetime.fromtimestamp(meta["ts"], UTC).isoformat(timespec="milliseconds")
    headers: dict[str, str] = {}
    for name, value in pending.headers:
        if redactor.keep_header(name):
            lower = name.lower()
            headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
    meta["request_headers"] = headers
    data = redacted_json(meta, redactor)
    clean = orjson.loads(data)
    status = meta["status"] if isinstance(meta["status"], int) else None
    return Row(ts=float(meta["ts"]), request_id=str(clean["id"]),
               upstream_request_id=clean["upstream_request_id"], principal=clean["principal"],
               model=clean["model"], status=status, data=data, request_body=request_body,
               response_body=response_body, parts=parts,
               content=content_digest(data, request_body, response_body))


def plain(message: dict[str, Any], problem: str) -> dict[str, Any]:
    """A copy of a record frame's ``message`` that always serialises: annotations left out,
    every string made valid UTF-8."""
    meta = _valid_utf8({k: v for k, v in message["meta"].items() if k != "annotations"})
    meta["annotations"] = {}
    meta["audit_problem"] = f"prepared without annotations: {problem}"
    headers = [[_valid_utf8(k), _valid_utf8(v)] for k, v in message.get("headers") or ()]
    return {**message, "meta": meta, "headers": headers}


def plain_pending(pending: Pending, problem: str) -> Pending:
    """The same for a record whose preparation failed in the writer."""
    message = plain({"meta": pending.meta, "headers": pending.headers}, problem)
    return Pending(message["meta"], [tuple(h) for h in message["headers"]],
                   pending.request_body, None, pending.response_body, pending.response_events)


def _valid_utf8(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(_valid_utf8(k)): _valid_utf8(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_valid_utf8(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _valid_utf8(str(value))


def redacted_json(meta: dict[str, Any], redactor: Redactor) -> str:
    """The metadata as canonical JSON, redacted in one pass over its text (patterns never
    span a quote, so the text stays valid JSON); per value if a match ever broke it."""
    text = orjson.dumps(meta, option=orjson.OPT_SORT_KEYS, default=str).decode()
    redacted = redactor.text(text)
    if redacted == text:
        return text
    try:
        orjson.loads(redacted)
        return redacted
    except orjson.JSONDecodeError:
        clean = _redact_values(orjson.loads(text), redactor)
        return orjson.dumps(clean, option=orjson.OPT_SORT_KEYS).decode()


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
    if isinstance(value, list | tuple):
        return [_redact_values(v, redactor) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redactor.text(str(value))


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
