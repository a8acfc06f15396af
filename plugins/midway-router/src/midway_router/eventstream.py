"""AWS event-stream framing (``application/vnd.amazon.eventstream``), decoded incrementally.

Each message is::

    total length (u32) | headers length (u32) | prelude CRC32 (u32)
    headers | payload | message CRC32 (u32, over everything before it)

All integers big-endian. A header is a 1-byte name length, the name, a 1-byte value type and
the value. Bedrock's InvokeModelWithResponseStream answers with such messages.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from typing import Any

import attrs

_PRELUDE = 12
_MIN_MESSAGE = _PRELUDE + 4
# Bedrock chunks are small; a bigger length means a corrupt stream, not a big message.
MAX_MESSAGE = 16 * 1024 * 1024


class EventStreamError(ValueError):
    """The bytes are not a valid event stream (bad length, CRC or header)."""


@attrs.frozen
class EventMessage:
    headers: dict[str, Any]
    payload: bytes
    raw: bytes = b""  # the whole message as it came (relayed unmodified to Bedrock clients)

    @property
    def message_type(self) -> str | None:
        value = self.headers.get(":message-type")
        return value if isinstance(value, str) else None

    @property
    def event_type(self) -> str | None:
        value = self.headers.get(":event-type") or self.headers.get(":exception-type")
        return value if isinstance(value, str) else None


class EventStreamDecoder:
    """Feed bytes split anywhere; get back each message once all of it arrived."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """How many bytes of an incomplete message are held."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[EventMessage]:
        buf = self._buf
        buf += data
        messages: list[EventMessage] = []
        while len(buf) >= _PRELUDE:
            total, headers_len, prelude_crc = struct.unpack_from(">III", buf)
            if zlib.crc32(buf[:8]) != prelude_crc:
                raise EventStreamError("event-stream prelude CRC mismatch")
            if total < _MIN_MESSAGE or total > MAX_MESSAGE or \
                    headers_len > total - _MIN_MESSAGE:
                raise EventStreamError(f"event-stream message of impossible length {total}")
            if len(buf) < total:
                break
            (message_crc,) = struct.unpack_from(">I", buf, total - 4)
            if zlib.crc32(buf[:total - 4]) != message_crc:
                raise EventStreamError("event-stream message CRC mismatch")
            headers = _headers(bytes(buf[_PRELUDE:_PRELUDE + headers_len]))
            payload = bytes(buf[_PRELUDE + headers_len:total - 4])
            messages.append(EventMessage(headers=headers, payload=payload,
                                         raw=bytes(buf[:total])))
            del buf[:total]
        return messages


# value type → struct format of fixed-size values
_FIXED = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}


def _headers(data: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    pos = 0
    try:
        while pos < len(data):
            name_len = data[pos]
            name = data[pos + 1:pos + 1 + name_len].decode()
            pos += 1 + name_len
            kind = data[pos]
            pos += 1
            value: Any
            if kind in (0, 1):
                value = kind == 0
            elif kind in _FIXED:
                fmt = _FIXED[kind]
                (value,) = struct.unpack_from(fmt, data, pos)
                pos += struct.calcsize(fmt)
            elif kind in (6, 7):
                (length,) = struct.unpack_from(">H", data, pos)
                raw = data[pos + 2:pos + 2 + length]
                if len(raw) != length:
                    raise EventStreamError("event-stream header value is cut short")
                value = raw.decode() if kind == 7 else raw
                pos += 2 + length
            elif kind == 9:
                value = uuid.UUID(bytes=data[pos:pos + 16])
                pos += 16
            else:
                raise EventStreamError(f"unknown event-stream header type {kind}")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, EventStreamError):
            raise
        raise EventStreamError("malformed event-stream headers") from None
    return headers
