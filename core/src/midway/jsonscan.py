"""The small top-level fields of a JSON object read as it streams past, without keeping it.

A JSON answer too large to buffer is relayed chunk by chunk; :class:`TopLevelScanner` is fed
the same (decoded) bytes and keeps each top-level field's value up to ``field_limit`` bytes
(``type``, ``model``, ``stop_reason``, ``usage``, an error's ``error``), skipping larger ones
(``content``). Strings and nesting are followed with ``bytes.find`` and a regex, so a
hundred-megabyte text block costs a few searches, not a Python step per byte.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# Where the nesting of a value can change (outside strings).
_STRUCTURE = re.compile(rb'["{}\[\]]')
# The rest of a string up to its closing quote (escapes and all), in one match.
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
# Where a top-level number, true, false or null ends.
_SCALAR_END = re.compile(rb"[,}\]\s]")
_WHITESPACE = b" \t\r\n"
_KEY_LIMIT = 1024

# states
_START, _KEY_OR_END, _KEY, _COLON, _VALUE, _NESTED, _SCALAR, _AFTER, _DONE, _BAD = range(10)


class TopLevelScanner:
    """Feed the bytes of one JSON document in any split; read ``fields`` and ``complete``.

    ``fields`` maps each top-level key whose value was at most ``field_limit`` bytes to the
    parsed value. ``complete`` is true once the top-level object has closed; ``invalid`` once
    the bytes are not a JSON object (the scan stops there).
    """

    __slots__ = ("_depth", "_escaped", "_in_string", "_key", "_state", "_value",
                 "_value_size", "field_limit", "fields")

    def __init__(self, field_limit: int = 64 * 1024) -> None:
        self.field_limit = field_limit
        self.fields: dict[str, Any] = {}
        self._state = _START
        self._depth = 0
        self._in_string = False
        self._escaped = False  # the last chunk ended with a string's backslash
        self._key: list[bytes] | None = []
        self._value: list[bytes] | None = None
        self._value_size = 0

    @property
    def complete(self) -> bool:
        return self._state == _DONE

    @property
    def invalid(self) -> bool:
        return self._state == _BAD

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state in (_VALUE, _NESTED):
                pos = self._in_value(data, pos)
            elif state == _KEY:
                pos = self._in_key(data, pos)
            elif state == _SCALAR:
                pos = self._in_scalar(data, pos)
            elif state in (_DONE, _BAD):
                return
            else:
                byte = data[pos]
                pos += 1
                if byte in _WHITESPACE:
                    continue
                self._token(byte)

    # -- between values: one byte at a time (a few per field) --

    def _token(self, byte: int) -> None:
        state = self._state
        if state == _START:
            self._state = _KEY_OR_END if byte == 0x7B else _BAD  # {
        elif state == _KEY_OR_END:
            if byte == 0x22:  # "
                self._state, self._key, self._escaped = _KEY, [], False
            else:
                self._state = _DONE if byte == 0x7D else _BAD  # }
        elif state == _COLON:
            self._state = _VALUE if byte == 0x3A else _BAD  # :
            self._value = [] if self._key is not None else None
            self._value_size = 0
            self._depth, self._in_string = 0, False
        elif state == _AFTER:
            if byte == 0x2C:  # ,
                self._state = _KEY_OR_END
            else:
                self._state = _DONE if byte == 0x7D else _BAD

    # -- inside a key or a value --

    def _string_end(self, data: bytes, pos: int) -> int:
        """The index of the quote that closes the string ``data[pos:]`` is in, or -1."""
        if self._escaped:  # the last chunk ended inside an escape: its second byte
            if pos >= len(data):
                return -1
            pos += 1
            self._escaped = False
        quote = data.find(b'"', pos)
        if data.find(b"\\", pos, len(data) if quote < 0 else quote) < 0:
            return quote  # no escape before it: the common case, at memchr's speed
        end = _STRING_BODY.match(data, pos).end()  # type: ignore[union-attr]
        if end == len(data):
            return -1
        if data[end] == 0x22:
            return end
        self._escaped = True  # a backslash, the chunk's last byte
        return -1

    def _in_key(self, data: bytes, pos: int) -> int:
        quote = self._string_end(data, pos)
        stop = len(data) if quote < 0 else quote
        key = self._key
        if key is not None:
            key.append(data[pos:stop])
            if sum(map(len, key)) > _KEY_LIMIT:
                self._key = None  # a key this long is no field anyone reads
        if quote < 0:
            return len(data)
        self._state = _COLON
        return quote + 1

    def _in_value(self, data: bytes, pos: int) -> int:
        start = pos
        if self._state == _VALUE:  # the value's first byte
            while pos < len(data) and data[pos] in _WHITESPACE:
                pos += 1
            if pos == len(data):
                return pos
            start = pos
            byte = data[pos]
            if byte == 0x22:
                self._in_string, self._escaped = True, False
                pos += 1
            elif byte in (0x7B, 0x5B):  # { [
                self._depth = 1
                pos += 1
            else:
                self._state = _SCALAR
                return self._in_scalar(data, pos)
            self._state = _NESTED
        end = -1
        while pos < len(data):
            if self._in_string:
                quote = self._string_end(data, pos)
                if quote < 0:
                    break
                self._in_string = False
                pos = quote + 1
                if self._depth == 0:
                    end = pos
                    break
                continue
            found = _STRUCTURE.search(data, pos)
            if found is None:
                break
            pos = found.end()
            char = data[found.start()]
            if char == 0x22:
                self._in_string, self._escaped = True, False
            elif char in (0x7B, 0x5B):
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == 0:
                    end = pos
                    break
        self._capture(data[start:len(data) if end < 0 else end])
        if end < 0:
            return len(data)
        self._field_done()
        return end

    def _in_scalar(self, data: bytes, pos: int) -> int:
        found = _SCALAR_END.search(data, pos)
        end = len(data) if found is None else found.start()
        self._capture(data[pos:end])
        if found is not None:
            self._field_done()
        return end

    def _capture(self, part: bytes) -> None:
        value = self._value
        if value is not None and part:
            self._value_size += len(part)
            if self._value_size > self.field_limit:
                self._value = None
            else:
                value.append(part)

    def _field_done(self) -> None:
        self._state = _AFTER
        key, value = self._key, self._value
        self._value = None
        if key is None or value is None:
            return
        try:
            self.fields[orjson.loads(b'"' + b"".join(key) + b'"')] = orjson.loads(b"".join(value))
        except orjson.JSONDecodeError:
            self._state = _BAD
