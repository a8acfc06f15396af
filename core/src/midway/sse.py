"""Incremental server-sent-events framing that survives any split of the byte stream."""

from __future__ import annotations

from typing import Any

import attrs
import orjson


@attrs.define(eq=False)
class SSEEvent:
    """One SSE event. ``raw`` holds the exact bytes relayed, blank-line terminator included."""

    name: str | None
    data: str
    raw: bytes
    _parsed: Any = attrs.field(default=None, init=False)

    def json(self) -> Any:
        """``data`` parsed as JSON (``None`` if it is not JSON)."""
        if self._parsed is None and self.data:
            try:
                self._parsed = orjson.loads(self.data)
            except orjson.JSONDecodeError:
                self._parsed = None
        return self._parsed

    @classmethod
    def build(cls, name: str, data: Any) -> SSEEvent:
        """A new event from a name and a JSON-able object (or preformatted text)."""
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        return cls(name=name, data=text, raw=encode_event(name, text))

    @classmethod
    def dropped(cls) -> SSEEvent:
        """A replacement that writes nothing."""
        return cls(name=None, data="", raw=b"")


def parse_block(block: bytes, raw: bytes) -> SSEEvent:
    """Parse one event block (lines without the terminating blank line, LF-separated)."""
    if block.startswith(b"event: "):  # Anthropic's shape, "event: X\ndata: Y": no general parse
        nl = block.find(b"\n")
        if nl > 0 and block.startswith(b"data: ", nl + 1) and block.find(b"\n", nl + 1) < 0:
            return SSEEvent(name=block[7:nl].decode("utf-8", "replace"),
                            data=block[nl + 7:].decode("utf-8", "replace"), raw=raw)
    name: str | None = None
    data: list[str] = []
    for line in block.decode("utf-8", "replace").split("\n"):
        if not line or line.startswith(":"):
            continue
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return SSEEvent(name=name, data="\n".join(data), raw=raw)


# Pieces from this size on are searched by SSEParser.feed_marked rather than walked.
SEARCHED_SIZE = 2048


class SSEParser:
    """Feed bytes as they arrive; get back each complete event once its blank line arrived.

    Line ends may be LF, CRLF or CR (a CR at the end of a chunk waits for the next byte).
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return self._buf

    def feed(self, data: bytes, skip: tuple[bytes, ...] = ()) -> list[SSEEvent]:
        """Complete events, leaving out those whose bytes start with one of ``skip``."""
        return self._feed(self._buf + data if self._buf else data, skip)

    def _feed(self, buf: bytes, skip: tuple[bytes, ...]) -> list[SSEEvent]:
        if b"\r" not in buf:
            return self._feed_lf(buf, skip)
        events = self._feed_any(buf)
        return [e for e in events if not e.raw.startswith(skip)] if skip else events

    def feed_marked(self, data: bytes, markers: tuple[bytes, ...],
                    skip: tuple[bytes, ...]) -> list[SSEEvent]:
        """As ``feed``, but only the events holding one of ``markers`` (bytes without a line
        end) are sure to be among those returned.

        A run of many events in one piece (a stream's answer read at once) is searched for
        the markers in C instead of walked event by event (a ``find`` and a ``startswith``
        per event, whose arguments alone cost ~450 instructions each in Python 3.11); few
        events are walked, which costs less than the searches.
        """
        buf = self._buf + data if self._buf else data
        if len(buf) < SEARCHED_SIZE:
            return self._feed(buf, skip)
        end = buf.rfind(b"\n\n")
        # A third LF in a row (rare) starts the next event with one: walked event by event.
        if end < 1 or buf[end - 1] == 10 or b"\r" in buf:
            return self._feed(buf, skip)
        find, rfind = buf.find, buf.rfind
        hits = [find(marker, 0, end) for marker in markers]
        events: list[SSEEvent] = []
        while True:
            at = min([hit for hit in hits if hit >= 0], default=-1)
            if at < 0:
                break
            start = rfind(b"\n\n", 0, at)
            if start > 0 and buf[start - 1] == 10:  # as above
                return self._feed(buf, skip)
            start = 0 if start < 0 else start + 2
            stop = find(b"\n\n", at)  # at most end: a marker holds no LF
            if not buf.startswith(skip, start):
                events.append(parse_block(buf[start:stop], buf[start:stop + 2]))
            hits = [hit if hit > stop or hit < 0 else find(marker, stop, end)
                    for hit, marker in zip(hits, markers, strict=True)]
        self._buf = buf[end + 2:]
        return events

    def feed_runs(self, data: bytes, skip: tuple[bytes, ...]) -> list[SSEEvent | bytes]:
        """Complete events, those whose bytes start with one of ``skip`` not parsed: each run
        of them comes as its bytes (every byte of the complete events is returned, in order).
        """
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            return list(self._feed_any(buf))
        blocks = buf.split(b"\n\n")  # as _feed_lf's search: the last one is not complete
        self._buf = blocks.pop()
        out: list[SSEEvent | bytes] = []
        run = 0  # where the current run of skipped events starts
        for i in [i for i, block in enumerate(blocks) if not block.startswith(skip)]:
            if run < i:
                out.append(b"\n\n".join(blocks[run:i]) + b"\n\n")
            block = blocks[i]
            out.append(parse_block(block, block + b"\n\n"))
            run = i + 1
        if run < len(blocks):
            out.append(b"\n\n".join(blocks[run:]) + b"\n\n")
        return out

    def _feed_lf(self, buf: bytes, skip: tuple[bytes, ...]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        start = 0
        find = buf.find
        while True:
            end = find(b"\n\n", start)
            if end < 0:
                break
            # Skipped events are never decoded (most of a stream is content deltas).
            if not skip or not buf.startswith(skip, start):
                events.append(parse_block(buf[start:end], buf[start:end + 2]))
            start = end + 2
        self._buf = buf[start:]
        return events

    def _feed_any(self, buf: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        start = 0  # start of the current event in buf
        pos = 0  # start of the current line
        n = len(buf)
        lines: list[bytes] = []
        while pos < n:
            lf = buf.find(b"\n", pos)
            cr = buf.find(b"\r", pos)
            if lf < 0 and cr < 0:
                break
            if cr >= 0 and (lf < 0 or cr < lf):
                if cr + 1 == n:
                    break  # a CR at the very end may be the first half of CRLF
                line_end, nxt = cr, cr + (2 if buf[cr + 1:cr + 2] == b"\n" else 1)
            else:
                line_end, nxt = lf, lf + 1
            line = buf[pos:line_end]
            pos = nxt
            if line:
                lines.append(line)
                continue
            events.append(parse_block(b"\n".join(lines), buf[start:pos]))
            lines = []
            start = pos
        self._buf = buf[start:]
        return events


def encode_event(name: str, data: Any) -> bytes:
    """Wire bytes of one event, as Anthropic writes them."""
    text = data if isinstance(data, str) else orjson.dumps(data).decode()
    return f"event: {name}\ndata: {text}\n\n".encode()
