"""Reading usage, stop reason and errors off an answer, without changing a byte of it."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from operator import methodcaller
from typing import Any

import orjson

from midway.annotations import COUNT_TOKENS
from midway.exchange import ErrorKind, Exchange, KeptStream
from midway.jsonscan import TopLevelScanner
from midway.sse import SSEEvent, SSEParser, parse_block

# Events that carry nothing the core needs: skipped before any parsing (the bulk of a stream).
SKIP_PREFIXES = (b"event: content_block", b"event: ping")
# The events usage and outcome are read from.
OBSERVED_EVENTS = frozenset({"message_start", "message_delta", "message_stop", "error"})
# What the bytes of an event named one of OBSERVED_EVENTS hold (its `event:` line):
# SSEParser.feed_marked finds them by searching for these.
OBSERVED_MARKERS = (b"message_", b"error")
# The fields of a content_block_delta's ``delta`` whose characters are its text.
_DELTA_TEXT = ("text", "thinking", "partial_json")
# A content_block_delta as Anthropic writes it, its text field's JSON string captured: never
# across a line, and no control character in it (invalid JSON: such an event is parsed alone).
_DELTA = re.compile(rb'event: content_block_delta\ndata: \{"type":"content_block_delta",'
                    rb'"index":\d+,"delta":\{"type":"[a-z_]+","(?:text|thinking|partial_json)":'
                    rb'"([^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*)"\}\}\n\n')
_DELTA_LINE = b"event: content_block_delta\n"


_TAIL = b'"}}\n\n'
# what a plain text may not hold: a quote or backslash (an escape), a control character
_NOT_PLAIN = b'"\\' + bytes(range(32))


def _alike_text(run: bytes) -> int | None:
    """The text of a run whose deltas follow one another, all alike (one index, one type)
    and plain (ASCII, no escape), as a text block streams: a few scans of the bytes instead
    of a match per event; ``None`` for any other run."""
    start = run.find(_DELTA_LINE)
    if start < 0 or (start and run[start - 2:start] != b"\n\n"):
        return None
    # The first delta's bytes up to its text, which each following one must repeat.
    head = run[start:run.find(b'":"', run.find(b',"delta":{"type":"', start) + 18) + 3]
    end = run.rfind(_TAIL) + len(_TAIL)
    if end - start < len(head) + len(_TAIL) or not _DELTA.fullmatch(head + _TAIL) or \
            b"content_block_delta" in run[:start] or b"content_block_delta" in run[end:]:
        return None
    # run[start:end] is deltas each ending with the tail: each must start with the head, and
    # its text (the rest) hold no quote (so no tail either), escape or control character.
    pieces = run[start:end - len(_TAIL)].split(_TAIL)
    if not all(map(methodcaller("startswith", head), pieces)):
        return None
    skip = len(head)
    texts = b"".join([piece[skip:] for piece in pieces])
    if not texts.isascii() or len(texts.translate(None, _NOT_PLAIN)) != len(texts):
        return None
    return len(texts)


def delta_text(payload: Any) -> int:
    """Characters of text, thinking and tool input in one ``content_block_delta`` (parsed)."""
    delta = payload.get("delta") if isinstance(payload, dict) else None
    if not isinstance(delta, dict):
        return 0
    chars = 0
    for field in _DELTA_TEXT:
        text = delta.get(field)
        if isinstance(text, str):
            chars += len(text)
    return chars


def run_text(run: bytes) -> int | None:
    """``delta_text`` summed over a run of complete LF-delimited events without parsing
    each; ``None`` when one of its ``content_block_delta`` events is not in Anthropic's
    shape (or its text not valid JSON): the caller parses them one by one instead."""
    alike = _alike_text(run)
    if alike is not None:
        return alike
    values = _DELTA.findall(run)
    # Each event matched names content_block_delta twice (its name, its type): any other
    # mention (another shape, the words inside a text) leaves the count off; and each match
    # starts an event: every line naming the event does (after a blank line, or first).
    lines = run.count(_DELTA_LINE)
    if run.count(b"content_block_delta") != 2 * len(values) or lines != \
            run.count(b"\n\n" + _DELTA_LINE) + run.startswith(_DELTA_LINE):
        return None
    if not values:
        return 0
    joined = b"".join(values)
    if joined.isascii() and b"\\" not in joined:  # no escape: one byte, one character
        return len(joined)
    try:
        texts = orjson.loads(b'["' + b'","'.join(values) + b'"]')
    except orjson.JSONDecodeError:
        return None
    return sum(map(len, texts))


def apply_event(exchange: Exchange, event: SSEEvent, started: bool) -> bool:
    """Copy what one stream event tells of usage and outcome into the exchange; whether the
    message has started by now (``started``: it had before). Read as
    :class:`~midway.assemble.MessageAssembler` reads a stream (a second ``message_start`` is
    ignored, usage merged by its rule) without keeping the message as it does: the core
    observes every open stream, and an assembler's copy of the message is ~600 bytes."""
    payload = event.json()
    if not isinstance(payload, dict):
        return started
    name = event.name
    if name == "message_start":
        message = payload.get("message")
        if isinstance(message, dict):
            message_id = message.get("id")
            if isinstance(message_id, str):
                exchange.response_id = message_id
            if not started:
                _apply_fields(exchange, message, message.get("usage"))
                return True
        exchange.usage.merge({})
    elif name == "message_delta":
        delta = payload.get("delta")
        _apply_fields(exchange, delta if isinstance(delta, dict) else {}, payload.get("usage"))
        return True
    elif name == "message_stop":
        exchange.complete = True
    elif name == "error":
        error = payload.get("error") or payload
        exchange.error_type = error.get("type") if isinstance(error, dict) else "error"
        exchange.fail(ErrorKind.STREAM_ERROR, f"stream error: {exchange.error_type}")
    return started


def _apply_fields(exchange: Exchange, fields: dict[str, Any], usage: Any) -> None:
    """A ``message_start``'s message or a ``message_delta``'s delta, and its usage."""
    exchange.usage.merge(usage if isinstance(usage, dict) else {})
    model = fields.get("model")
    if isinstance(model, str):
        exchange.response_model = model
    reason = fields.get("stop_reason")
    if isinstance(reason, str) and reason:
        exchange.stop_reason = reason


def apply_message(exchange: Exchange, body: bytes) -> None:
    """Fold a complete JSON answer (a message or an error) into the exchange."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if isinstance(payload, dict):
        apply_payload(exchange, payload)


def apply_payload(exchange: Exchange, payload: dict[str, Any], complete: bool = True) -> None:
    """Fold a JSON answer's top-level fields into the exchange (``complete``: the answer
    reached its end)."""
    if payload.get("type") == "message":
        exchange.usage.update(payload.get("usage") or {})
        exchange.stop_reason = payload.get("stop_reason")
        model = payload.get("model")
        if isinstance(model, str):
            exchange.response_model = model
        message_id = payload.get("id")
        if isinstance(message_id, str):
            exchange.response_id = message_id
        exchange.complete = complete
    elif payload.get("type") == "error":
        error = payload.get("error")
        exchange.error_type = error.get("type") if isinstance(error, dict) else "error"
    elif "input_tokens" in payload and exchange.request.path.endswith("/count_tokens"):
        exchange.annotations.setdefault(COUNT_TOKENS, payload.get("input_tokens"))


class StreamObserver:
    """Watches a raw SSE byte stream for the few events that carry usage and outcome."""

    __slots__ = ("_exchange", "_inflate", "_kept", "_parser", "_started")

    def __init__(self, exchange: Exchange, content_encoding: str | None = None) -> None:
        self._exchange = exchange
        self._started = False  # message_start (or a message_delta) came
        self._parser = SSEParser()
        self._inflate = _decoder(content_encoding)
        self._kept = exchange.kept_stream

    @property
    def readable(self) -> bool:
        """Whether the stream could be read (decoded) so far."""
        return not isinstance(self._inflate, _Opaque)

    def feed(self, chunk: bytes) -> None:
        if self._inflate is not None:
            self._feed_encoded(chunk)
            return
        if self._kept is not None:
            self._kept.add(chunk)
        for event in self._parser.feed_marked(chunk, OBSERVED_MARKERS, SKIP_PREFIXES):
            self.observe(event)

    def close(self) -> None:
        """The stream ended: observe a last event that came without its blank line."""
        pending = self._parser.pending
        if pending.strip():
            self.observe(final_event(pending))

    def _feed_encoded(self, chunk: bytes) -> None:
        try:
            for piece in _inflated(self._inflate, chunk):
                if self._kept is not None:
                    self._kept.add(piece)
                for event in self._parser.feed_marked(piece, OBSERVED_MARKERS,
                                                      SKIP_PREFIXES):
                    self.observe(event)
        except zlib.error:  # relayed all the same; midway just cannot read it
            self._inflate = _Opaque()

    def observe(self, event: SSEEvent) -> None:
        if event.raw.startswith(SKIP_PREFIXES):
            return
        if event.name in OBSERVED_EVENTS:
            self._started = apply_event(self._exchange, event, self._started)


def final_event(pending: bytes) -> SSEEvent:
    """The bytes left after a stream's last blank line, read as one event."""
    block = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n").strip(b"\n")
    return parse_block(block, pending)


class BodyObserver:
    """Watches a JSON answer too large to buffer as it is relayed: its small top-level
    fields (usage, model, stop reason), whether it ended, and its first ``keep`` bytes."""

    __slots__ = ("_exchange", "_inflate", "_scanner", "kept")

    def __init__(self, exchange: Exchange, content_encoding: str | None, keep: int) -> None:
        self._exchange = exchange
        self._inflate = _decoder(content_encoding)
        self._scanner = TopLevelScanner()
        self.kept = KeptStream(keep) if keep > 0 and readable(content_encoding) else None

    @property
    def complete(self) -> bool:
        """The top-level JSON value ended (``False`` for bodies midway cannot read)."""
        return self._scanner.complete

    @property
    def readable(self) -> bool:
        """Whether the body could be read (decoded) so far."""
        return not isinstance(self._inflate, _Opaque)

    def feed(self, chunk: bytes) -> None:
        if self._inflate is None:
            self._take(chunk)
            return
        try:
            for piece in _inflated(self._inflate, chunk):
                self._take(piece)
        except zlib.error:
            self._inflate = _Opaque()

    def _take(self, data: bytes) -> None:
        if data:
            if self.kept is not None:
                self.kept.add(data)
            self._scanner.feed(data)

    def finish(self) -> None:
        """Copy what was read into the exchange (the answer has ended, or been cut)."""
        exchange = self._exchange
        apply_payload(exchange, self._scanner.fields, complete=self._scanner.complete)
        kept = self.kept
        exchange.response_body = kept.value() if kept is not None else None
        exchange.response_body_truncated = kept is None or kept.truncated


def readable(content_encoding: str | None) -> bool:
    """Whether midway can read (decode) a body of this content encoding."""
    return not isinstance(_decoder(content_encoding), _Opaque)


_INFLATE_PIECE = 1024 * 1024


def _inflated(inflate: Any, chunk: bytes) -> Iterator[bytes]:
    """``chunk`` decoded a piece at a time: a compressed chunk may inflate a thousandfold."""
    yield inflate.decompress(chunk, _INFLATE_PIECE)
    while inflate.unconsumed_tail:
        yield inflate.decompress(inflate.unconsumed_tail, _INFLATE_PIECE)


def _decoder(content_encoding: str | None) -> Any:
    if not content_encoding or content_encoding == "identity":
        return None
    if content_encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if content_encoding == "deflate":
        return zlib.decompressobj()
    return _Opaque()


class _Opaque:
    """An encoding midway cannot read: relay it, observe nothing."""

    unconsumed_tail = b""

    def decompress(self, chunk: bytes, max_length: int = 0) -> bytes:
        return b""


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes | None:
    """Decode a complete body for observation; ``None`` when unreadable or over ``limit``."""
    if not content_encoding or content_encoding == "identity":
        return body
    decoder = _decoder(content_encoding)
    if isinstance(decoder, _Opaque):
        return None
    try:
        out: bytes = decoder.decompress(body, limit + 1)
    except zlib.error:
        return None
    return None if len(out) > limit else out
