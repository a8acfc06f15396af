"""Writing AWS event-stream messages (``application/vnd.amazon.eventstream``), the framing of
Bedrock's InvokeModelWithResponseStream answers.

botocore ships only a decoder (``botocore.eventstream.EventStreamBuffer``, which the tests and
the ``anthropic`` SDK's Bedrock client read these messages with) and smithy's encoder needs
Python 3.12, so the encoder is here: a message is::

    total length (u32) | headers length (u32) | prelude CRC32 (u32)
    headers | payload | message CRC32 (u32, over everything before it)

big-endian; each header a 1-byte name length, the name, value type 7 (string), a u16 length
and the UTF-8 value. Only string headers are written: Bedrock's events use no others.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

_STRING = 7


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message with string ``headers`` and ``payload``."""
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    if len(raw_name) > 255 or len(raw_value) > 0xFFFF:
        raise ValueError(f"event-stream header {name!r} is too long")
    return struct.pack(">B", len(raw_name)) + raw_name + \
        struct.pack(">BH", _STRING, len(raw_value)) + raw_value
