"""Rebuilding one message from a stream's events: what the client ended up with.

The grammar is the core's (:class:`midway.assemble.MessageAssembler`); this module keeps a
stream's events compactly until the writer rebuilds the message, and marks what audit records
about it (``incomplete``, ``error``, ``truncated``). Memory is bounded: past ``limit``
characters of deltas the rest is not kept and the message is marked ``truncated``.

The relay keeps a stream's bytes (``Midway.keep_stream_bodies``); the writer process splits
them into events (:meth:`EventLog.from_sse`) and rebuilds the message (:func:`reassemble`).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from midway.assemble import MessageAssembler
from midway.sse import SSEParser

# A data line, found from the newline before it (a literal the regex engine skips ahead to;
# the text is searched with a newline put in front).
_DATA_LINE = re.compile(r"\ndata: ?(.*)")


def recorded(assembler: MessageAssembler, truncated: bool = False) -> dict[str, Any]:
    """The message as audit records it: what the client got, marked ``incomplete`` when the
    stream ended early, with the ``error`` of an error event, ``truncated`` when cut."""
    message = assembler.message()
    if not assembler.complete:
        message["incomplete"] = True
    if assembler.error is not None:
        message["error"] = assembler.error
    if assembler.truncated or truncated:
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
            data = _DATA_LINE.findall("\n" + text)
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
    assembler = MessageAssembler(limit)
    try:
        payloads = orjson.loads("[" + ",".join(data) + "]") if data else []
    except orjson.JSONDecodeError:  # one event is not JSON: parse them one by one
        payloads = [_loads(text) for text in data]
    assembler.feed_all(payloads)
    return recorded(assembler, truncated)


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
