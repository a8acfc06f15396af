"""Rebuilding one message from a stream's events: what the client ended up with.

Text, thinking (with its signature), tool_use (with the ``input_json_delta`` fragments joined
and parsed) and any other block type, in block order. Memory is bounded: past ``limit``
characters of deltas the rest is not kept and the message is marked ``truncated``.

The relay keeps a stream's bytes (``Midway.keep_stream_bodies``); the writer process splits
them into events (:meth:`EventLog.from_sse`) and rebuilds the message (:func:`reassemble`).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from midway.sse import SSEParser

_DATA_LINE = re.compile(r"^data: ?(.*)$", re.MULTILINE)
_JSON_INPUT_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
_TEXT_FIELDS = {"text_delta": ("text", "text"), "thinking_delta": ("thinking", "thinking"),
                "signature_delta": ("signature", "signature")}


class StreamAssembler:
    """Fed every SSE event of one answer (``feed(name, payload)``); ``message()`` at the end."""

    __slots__ = (
        "_blocks",
        "_error",
        "_limit",
        "_message",
        "_parts",
        "_size",
        "_stopped",
        "truncated",
    )

    def __init__(self, limit: int) -> None:
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        # (index, field) -> fragments, joined once at the end (no quadratic concatenation)
        self._parts: dict[tuple[int, str], list[str]] = {}
        self._size = 0
        self._limit = limit
        self.truncated = False
        self._stopped = False
        self._error: Any = None

    def feed(self, name: str | None, payload: Any) -> None:
        if not isinstance(payload, dict):
            return
        kind = payload.get("type", name)
        if kind == "content_block_delta":
            self._delta(payload)
        elif kind == "content_block_start":
            block = payload.get("content_block")
            index = payload.get("index")
            if isinstance(block, dict) and isinstance(index, int):
                self._blocks[index] = dict(block)
        elif kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self._message = dict(message)
        elif kind == "message_delta":
            self._message_delta(payload)
        elif kind == "message_stop":
            self._stopped = True
        elif kind == "error":
            self._error = payload.get("error")

    def feed_all(self, payloads: list[Any]) -> None:
        """``feed`` each payload; text deltas, nearly all of a stream, take a short cut."""
        parts = self._parts
        limit = self._limit
        for payload in payloads:
            if type(payload) is dict and payload.get("type") == "content_block_delta":
                delta = payload.get("delta")
                index = payload.get("index")
                if type(delta) is dict and type(index) is int \
                        and delta.get("type") == "text_delta":
                    value = delta.get("text")
                    if type(value) is str:
                        if self._size + len(value) > limit:
                            self.truncated = True
                            continue
                        self._size += len(value)
                        found = parts.get((index, "text"))
                        if found is None:
                            parts[(index, "text")] = [value]
                        else:
                            found.append(value)
                        continue
            self.feed(None, payload)

    def _delta(self, payload: dict[str, Any]) -> None:
        index = payload.get("index")
        delta = payload.get("delta")
        if not isinstance(index, int) or not isinstance(delta, dict):
            return
        dtype = delta.get("type")
        if dtype == "input_json_delta":
            field, value = "partial_json", delta.get("partial_json")
        elif dtype in _TEXT_FIELDS:
            field, key = _TEXT_FIELDS[dtype]
            value = delta.get(key)
        elif dtype == "citations_delta":
            block = self._blocks.setdefault(index, {})
            block.setdefault("citations", []).append(delta.get("citation"))
            return
        else:
            return
        if not isinstance(value, str):
            return
        if self._size + len(value) > self._limit and field != "signature":
            self.truncated = True
            return
        self._size += len(value)
        self._parts.setdefault((index, field), []).append(value)

    def _message_delta(self, payload: dict[str, Any]) -> None:
        message = self._message if self._message is not None else {}
        self._message = message
        delta = payload.get("delta")
        if isinstance(delta, dict):
            message.update(delta)
        usage = payload.get("usage")
        if isinstance(usage, dict):
            merged = dict(message.get("usage") or {})
            merged.update({k: v for k, v in usage.items() if v is not None})
            message["usage"] = merged

    def message(self) -> dict[str, Any]:
        """The reassembled message (``incomplete`` when the stream ended early)."""
        message = dict(self._message or {"type": "message"})
        blocks: dict[int, dict[str, Any]] = {i: dict(b) for i, b in self._blocks.items()}
        for (index, field), parts in self._parts.items():
            block = blocks.setdefault(index, {})
            joined = "".join(parts)
            if field == "partial_json":
                block["input"] = _parse_input(joined)
            else:
                block[field] = joined
        content = [blocks[i] for i in sorted(blocks)]
        for block in content:
            if block.get("type") in _JSON_INPUT_BLOCKS and "input" not in block:
                block.setdefault("input", {})
        message["content"] = content
        if not self._stopped:
            message["incomplete"] = True
        if self._error is not None:
            message["error"] = self._error
        if self.truncated:
            message["truncated"] = True
        return message


class EventLog:
    """The data of a stream's events, kept as text (a list append per event). Deltas past
    ``limit`` characters are left out; the events around them (usage, stop reason) are not."""

    __slots__ = ("_limit", "_size", "data", "truncated")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self.data: list[str] = []
        self.truncated = False

    def add(self, name: str | None, data: str) -> None:
        if name == "content_block_delta" and self._size + len(data) > self._limit:
            self.truncated = True
            return
        self._size += len(data)
        self.data.append(data)

    @property
    def size(self) -> int:
        return self._size

    @classmethod
    def from_sse(cls, raw: bytes, limit: int, truncated: bool = False) -> EventLog:
        """The log of a stream's bytes as the relay kept them (``truncated``: cut there)."""
        events = cls(limit)
        text = raw.decode("utf-8", "replace")
        # What Anthropic sends: LF line ends, one data line per event, every event ended by
        # a blank line. Then the data lines are the events' data, found in one C call; any
        # other shape, or deltas past the limit, goes through the full parser.
        if "\r" not in text:
            data = _DATA_LINE.findall(text)
            size = sum(map(len, data))
            if data and len(data) == text.count("\n\n") and size <= limit:
                events.data, events._size = data, size
                events.truncated = truncated
                return events
        for event in SSEParser().feed(raw):
            if event.name != "ping":
                events.add(event.name, event.data)
        events.truncated = events.truncated or truncated
        return events


def reassemble(data: list[str], limit: int, truncated: bool) -> dict[str, Any]:
    """The message an :class:`EventLog` saw (one JSON parse for all its events)."""
    assembler = StreamAssembler(limit)
    try:
        payloads = orjson.loads("[" + ",".join(data) + "]") if data else []
    except orjson.JSONDecodeError:  # one event is not JSON: parse them one by one
        payloads = [_loads(text) for text in data]
    assembler.feed_all(payloads)
    assembler.truncated = assembler.truncated or truncated
    return assembler.message()


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _parse_input(text: str) -> Any:
    if not text:
        return {}
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # cut short: keep what arrived, as text
        return {"_partial_json": text}
