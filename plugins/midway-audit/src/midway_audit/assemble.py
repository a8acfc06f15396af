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
    # One event a line: a newline is then only ever between two events (JSON text has none
    # of its own; the full parser joins an event's data lines with one, so not always).
    text = "[\n" + ",\n".join(data) + "\n]"
    if text.count("\n") == len(data) + 1 and len(text) <= limit:
        # Nearly all of a stream is text deltas: each block's are fed as one delta holding
        # their texts joined, or with the block's start (a parse and a feed per block, not per
        # event). The same message, as long as the assembler finds nothing irregular (nothing
        # is cut: the deltas' text is shorter than the limit); otherwise the events are fed
        # one by one, as they came.
        merged, index = text, 0
        while f'"index":{index},' in merged:
            merged = _join_text_deltas(merged, index)
            index += 1
        if merged is not text:
            try:
                assembler = _assembled(orjson.loads(merged), limit)
            except orjson.JSONDecodeError:
                pass
            else:
                if assembler.problem is None:
                    return recorded(assembler, truncated)
    try:
        payloads = orjson.loads(text)
    except orjson.JSONDecodeError:  # one event is not JSON: parse them one by one
        payloads = [_loads(one) for one in data]
    return recorded(_assembled(payloads, limit), truncated)


# How Anthropic writes a text block's start and its deltas, up to the string of the text
_TEXT_START = '{"type":"content_block_start","index":%d,"content_block":{"type":"text","text":"'
_TEXT_DELTA = '{"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":"'
# The rest of a JSON string, escapes whole, no \\u escape (two deltas could split a surrogate
# pair, which only joined would parse); several of them, a newline between two.
_STRINGS = re.compile(r'[^"\\]*(?:\\[^u\n][^"\\]*)*')


def _join_text_deltas(text: str, index: int) -> str:
    """``text`` (events, one a line) with each text delta of block ``index`` joined into the
    line before it — when every such line is that block's start or one of its text deltas,
    written as Anthropic writes them (else ``text`` as it is)."""
    head = _TEXT_DELTA % index
    pieces = text.split(f'"}}}},\n{head}')  # the end of a line, the start of a delta's
    if len(pieces) == 1:
        return text
    start = _TEXT_START % index
    inner = "\n".join(pieces[1:-1])
    if inner.count("\n") == len(pieces) - 3:  # one run of deltas: the rest are their texts
        before, after = pieces[:1], pieces[-1:]
    else:  # other lines between them
        before, after, inner = pieces[:-1], pieces[1:], ""
    strings = [inner]  # of the lines joined: their text
    for piece in before:  # each join's line before: a text block's start or text delta
        at = piece.rfind("\n") + 1
        if not at:  # a delta's text: its line's start went with the join before it
            strings.append(piece)
        elif piece.startswith(head, at):
            strings.append(piece[at + len(head) :])
        elif piece.startswith(start, at):
            strings.append(piece[at + len(start) :])
        else:
            return text
    for piece in after:  # the last delta of each run: nothing after its text
        end = piece.find("\n")
        if end >= 0:
            last = piece[:end].removesuffix(",")
            if not last.endswith('"}}'):
                return text
            strings.append(last[:-3])
    if _STRINGS.fullmatch("\n".join(strings)) is None:
        return text
    return "".join(pieces)


def _assembled(payloads: list[Any], limit: int) -> MessageAssembler:
    assembler = MessageAssembler(limit)
    assembler.feed_all(payloads)
    return assembler


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
