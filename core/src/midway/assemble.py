"""Anthropic's streaming grammar, in one place: a stream's events in, the Message out.

:class:`MessageAssembler` is fed the events of one streamed ``/v1/messages`` answer, in order,
and rebuilds the Message the same request without ``stream`` would have returned: ``id``,
``type``, ``role``, ``model``, the content blocks (text with citations, thinking with its
signature byte for byte, tool_use / server_tool_use / mcp_tool_use with their
``input_json_delta`` fragments joined and parsed, and any other block as it started),
``stop_reason``, ``stop_sequence``, any other ``message_delta`` field (``container``…) and
``usage``.

The grammar it reads: ``message_start`` (the message, ``content`` empty), then per block
``content_block_start`` / ``content_block_delta`` (``text_delta``, ``thinking_delta``,
``signature_delta``, ``input_json_delta``, ``citations_delta``) / ``content_block_stop``, then
``message_delta`` (stop reason and *cumulative* usage: later values replace earlier ones, never
add up) and ``message_stop``; ``ping`` anywhere; ``error`` ends a failed stream.

It never raises on what it is fed. Anything it does not understand (an unknown event or delta,
a malformed payload, events out of order) is kept in :attr:`MessageAssembler.unknown` or
skipped, and noted in :attr:`MessageAssembler.problem`: :attr:`MessageAssembler.exact` says
whether :meth:`MessageAssembler.message` is exactly what the non-streaming API would have
returned. Users: the core's observer (usage and outcome), the cache (stores exact messages
only), audit (records whatever the client got).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType
from typing import Any, cast

import orjson

from midway.sse import SSEEvent, SSEParser

# Blocks whose ``input`` arrives as input_json_delta fragments.
JSON_INPUT_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
# Deltas that append a string to a field of their block: delta type -> field.
_STRING_DELTAS = {"text_delta": "text", "thinking_delta": "thinking",
                  "signature_delta": "signature", "input_json_delta": "partial_json"}
# Where partial_json fragments are collected (not a field of the block).
_JSON = "partial_json"
# At most this many not-understood events are kept (a stream of them must not grow memory).
_UNKNOWN_KEPT = 1000
# What an assembler's block tables are until its first block starts: most assemblers (the
# core's observer, fed only the events that carry usage and outcome) never see one, and three
# empty dicts are ~200 bytes per open stream. Read-only: a write before the tables exist fails.
_NO_BLOCKS: Any = MappingProxyType({})


class MessageAssembler:
    """Fed one stream's events in order; :meth:`message` is the Message they make.

    ``limit`` bounds the characters of text, thinking and tool input kept (signatures are
    always kept whole): past it deltas are dropped and :attr:`truncated` is set.
    """

    __slots__ = ("_blocks", "_limit", "_message", "_open", "_parser", "_parts", "_size",
                 "complete", "error", "problem", "truncated", "unknown")

    def __init__(self, limit: int | None = None) -> None:
        self._message: dict[str, Any] | None = None
        # the three block tables: _NO_BLOCKS until the first content_block_start
        self._blocks = cast(dict[int, dict[str, Any]], _NO_BLOCKS)
        # (index, field) -> fragments, joined once when the block stops (never quadratic)
        self._parts = cast(dict[tuple[int, str], list[str]], _NO_BLOCKS)
        # the open blocks' indexes (a dict as a set: an empty set is 216 bytes, a dict 64)
        self._open = cast(dict[int, None], _NO_BLOCKS)
        self._size = 0
        self._limit = limit if limit is not None else -1
        self._parser: SSEParser | None = None
        #: ``message_stop`` arrived.
        self.complete = False
        #: The ``error`` object of an ``error`` event (the whole payload if it has none).
        self.error: Any = None
        #: The first thing not understood or out of order (``None``: every event understood).
        self.problem: str | None = None
        #: Deltas past ``limit`` were dropped.
        self.truncated = False
        #: ``(name, payload)`` of events not understood, in order (unknown events and deltas).
        self.unknown: list[tuple[str | None, Any]] = []

    # -- feeding ------------------------------------------------------------------------------

    def feed_bytes(self, data: bytes) -> None:
        """Feed raw SSE bytes, split anywhere (a partial event waits for the rest)."""
        if self._parser is None:
            self._parser = SSEParser()
        for event in self._parser.feed(data):
            self.feed_event(event)

    def feed_event(self, event: SSEEvent) -> None:
        """Feed one parsed SSE event."""
        if event.name == "ping":
            return
        if event.name is None and not event.data:
            return  # a comment line (keep-alive): no event at all
        self.feed(event.name, event.json())

    def feed(self, name: str | None, payload: Any) -> None:
        """Feed one event: its name (may be ``None``: the payload's ``type`` says) and data."""
        if not isinstance(payload, dict):
            if name != "ping":
                self._irregular(f"{name or 'an'} event whose data is not a JSON object")
            return
        kind = payload.get("type")
        if not isinstance(kind, str):
            kind = name
        if kind == "content_block_delta":
            self._delta(payload)
        elif kind == "ping":
            return
        elif self.complete:
            self._irregular(f"{kind} after message_stop")
            self._event(kind, payload)
        else:
            self._event(kind, payload)

    def feed_all(self, payloads: Iterable[Any]) -> None:
        """:meth:`feed` each payload (named by its ``type``); text deltas, nearly all of a
        stream, take a short cut."""
        limit = self._limit
        for payload in payloads:
            if type(payload) is dict and payload.get("type") == "content_block_delta":
                delta = payload.get("delta")
                index = payload.get("index")
                if type(delta) is dict and type(index) is int and index in self._open \
                        and delta.get("type") == "text_delta":
                    value = delta.get("text")
                    if type(value) is str:
                        if limit >= 0 and self._size + len(value) > limit:
                            self.truncated = True
                            continue
                        self._size += len(value)
                        parts = self._parts  # (made by the first block start, maybe in this loop)
                        found = parts.get((index, "text"))
                        if found is None:
                            parts[(index, "text")] = [value]
                        else:
                            found.append(value)
                        continue
            self.feed(None, payload)

    # -- what was seen so far -----------------------------------------------------------------

    @property
    def started(self) -> bool:
        """``message_start`` arrived."""
        return self._message is not None

    @property
    def exact(self) -> bool:
        """The stream ended with ``message_stop``, had no ``error`` and nothing not understood
        or cut: :meth:`message` is what the non-streaming API would have returned."""
        return self.complete and self.error is None and self.problem is None \
            and not self.truncated and self._message is not None

    @property
    def usage(self) -> dict[str, Any]:
        """Usage so far: ``message_start``'s, each field replaced by later ``message_delta``
        values (cumulative counts, never summed). ``null`` never replaces a value, and a count
        of 0 never replaces a non-zero one (some upstreams send 0 for what they do not know)."""
        usage = self._message.get("usage") if self._message is not None else None
        return usage if isinstance(usage, dict) else {}

    @property
    def model(self) -> str | None:
        model = self._message.get("model") if self._message is not None else None
        return model if isinstance(model, str) else None

    @property
    def stop_reason(self) -> str | None:
        reason = self._message.get("stop_reason") if self._message is not None else None
        return reason if isinstance(reason, str) else None

    @property
    def stop_sequence(self) -> str | None:
        sequence = self._message.get("stop_sequence") if self._message is not None else None
        return sequence if isinstance(sequence, str) else None

    def message(self) -> dict[str, Any]:
        """The Message so far. Each call returns new message, block and usage dicts (values
        deeper down, such as a tool's ``input``, are shared: do not change them). Blocks still
        open are included as far as they got; tool input whose JSON does not parse (a cut
        stream) is kept as ``{"_partial_json": text}``."""
        message: dict[str, Any] = dict(self._message) if self._message is not None \
            else {"type": "message"}
        blocks = dict(self._blocks)
        for index in self._open:
            blocks[index] = self._finished(index, dict(blocks[index]), consume=False)
        content = []
        for i in sorted(blocks):
            block = dict(blocks[i])
            if isinstance(block.get("citations"), list):
                block["citations"] = list(block["citations"])  # the one list appended to
            content.append(block)
        message["content"] = content
        usage = message.get("usage")
        if isinstance(usage, dict):
            message["usage"] = copy_usage(usage)
        return message

    # -- the grammar --------------------------------------------------------------------------

    def _event(self, kind: str | None, payload: dict[str, Any]) -> None:
        if kind == "content_block_start":
            self._block_start(payload)
        elif kind == "content_block_stop":
            index = payload.get("index")
            if isinstance(index, int) and index in self._open:
                del self._open[index]
                self._finished(index, self._blocks[index], consume=True)
            else:
                self._irregular("content_block_stop of a block not open")
        elif kind == "message_start":
            message = payload.get("message")
            if not isinstance(message, dict) or self._message is not None:
                self._irregular("a message_start without a message, or a second one")
                self._keep(kind, payload)
                return
            self._message = {**message, "content": []}
            usage = message.get("usage")
            self._message["usage"] = copy_usage(usage) if isinstance(usage, dict) else {}
        elif kind == "message_delta":
            self._message_delta(payload)
        elif kind == "message_stop":
            if self._message is None:
                self._irregular("message_stop before message_start")
            if self._open:
                self._irregular("message_stop with a block still open")
            self.complete = True
        elif kind == "error":
            self.error = payload.get("error") or payload
        else:
            self._irregular(f"unknown event {kind!r}")
            self._keep(kind, payload)

    def _block_start(self, payload: dict[str, Any]) -> None:
        block = payload.get("content_block")
        index = payload.get("index")
        if not isinstance(block, dict) or not isinstance(index, int) or index in self._blocks:
            self._irregular("a malformed or repeated content_block_start")
            self._keep("content_block_start", payload)
            return
        if self._message is None:
            self._irregular("content_block_start before message_start")
        block = dict(block)
        if isinstance(block.get("citations"), list):
            block["citations"] = list(block["citations"])  # appended to: not the payload's
        if self._blocks is _NO_BLOCKS:
            self._blocks, self._parts, self._open = {}, {}, {}
        self._blocks[index] = block
        self._open[index] = None

    def _delta(self, payload: dict[str, Any]) -> None:
        index = payload.get("index")
        delta = payload.get("delta")
        if not isinstance(index, int) or not isinstance(delta, dict) or index not in self._open:
            self._irregular("a content_block_delta of a block not open, or malformed")
            self._keep("content_block_delta", payload)
            return
        kind = delta.get("type")
        field = _STRING_DELTAS.get(kind) if isinstance(kind, str) else None
        if field is not None:
            value = delta.get(field)
            if not isinstance(value, str):
                self._irregular(f"a {kind} without its string")
                self._keep("content_block_delta", payload)
                return
            if self._limit >= 0 and self._size + len(value) > self._limit \
                    and field != "signature":  # a cut signature is worth nothing: kept whole
                self.truncated = True
                return
            self._size += len(value)
            found = self._parts.get((index, field))
            if found is None:
                self._parts[(index, field)] = [value]
            else:
                found.append(value)
        elif kind == "citations_delta" and "citation" in delta:
            self._blocks[index].setdefault("citations", []).append(delta["citation"])
        else:
            self._irregular(f"unknown delta {kind!r}")
            self._keep("content_block_delta", payload)

    def _message_delta(self, payload: dict[str, Any]) -> None:
        if self._message is None:
            self._irregular("message_delta before message_start")
            self._message = {"type": "message", "content": [], "usage": {}}
        delta = payload.get("delta")
        if isinstance(delta, dict):
            for key, value in delta.items():
                if key not in ("content", "usage"):
                    self._message[key] = value
        usage = payload.get("usage")
        if isinstance(usage, dict):
            merge_usage(self._message["usage"], usage)

    def _finished(self, index: int, block: dict[str, Any], consume: bool) -> dict[str, Any]:
        """``block`` with the fragments of its deltas joined in (``consume``: and dropped)."""
        parts = self._parts
        for field in ("text", "thinking", "signature"):
            fragments = parts.pop((index, field), None) if consume else parts.get((index, field))
            if fragments is not None:
                before = block.get(field)
                joined = "".join(fragments)
                block[field] = before + joined if isinstance(before, str) else joined
        fragments = parts.pop((index, _JSON), None) if consume else parts.get((index, _JSON))
        if fragments is not None:
            block["input"] = self._parse_input("".join(fragments), consume)
        elif block.get("type") in JSON_INPUT_BLOCKS and "input" not in block:
            block["input"] = {}
        return block

    def _parse_input(self, text: str, final: bool) -> Any:
        if not text:
            return {}
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:  # cut short or not JSON: keep what arrived, as text
            if final:
                self._irregular("tool input that is not JSON")
            return {"_partial_json": text}

    def _irregular(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem

    def _keep(self, name: str | None, payload: Any) -> None:
        if len(self.unknown) < _UNKNOWN_KEPT:
            self.unknown.append((name, payload))
        else:
            self.truncated = True


def merge_usage(usage: dict[str, Any], update: dict[str, Any]) -> None:
    """Apply a ``message_delta``'s ``usage`` to the usage so far (in place), as the core and
    billing's running cost do. Cumulative usage: present fields replace earlier ones, except
    ``null`` and a 0 over a non-zero count; nested objects (``server_tool_use``,
    ``cache_creation``) field by field."""
    for key, value in update.items():
        if value is None:
            continue
        before = usage.get(key)
        if value == 0 and type(value) is int and type(before) is int and before != 0:
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            merged = dict(before)
            merge_usage(merged, value)
            usage[key] = merged
        else:
            usage[key] = value


def copy_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """A ``message_start``'s usage, copied deep enough for :func:`merge_usage` to change."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in usage.items()}
