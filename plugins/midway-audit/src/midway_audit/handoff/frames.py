"""The frames between a relay and its writer process.

Relay → writer: frames of a 13-byte header (kind, then the lengths of the three parts, little
endian) and the parts: JSON metadata and two byte strings (a record's request and response
bodies; empty for the other kinds). Intents and records go through the shared ring
(ring.py); the socket carries the configuration, wake-ups, and frames too large for the ring.

Writer → relay: one JSON object per line on the socket (``ready``, ``error``, ``status``).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import orjson

HEADER = struct.Struct("<BIII")

CONFIG = 1  # socket, first: {"config": [audit] table, "data_dir", "log_level"}
INTENT = 2  # meta: the intent's metadata (intents.intent_meta); a: the request id
RECORD = 3  # meta: the record's metadata (record.capture); a, b: the request and response
WAKE = 4  # socket: the ring holds frames up to the position in ``a`` (8 bytes)
BY_SOCKET = 5  # ring: the next frame is too large for the ring; it comes over the socket


def frame(kind: int, meta: bytes, a: bytes = b"", b: bytes = b"") -> list[bytes]:
    """The pieces of one frame, for ``writelines`` (the bodies are not copied)."""
    return [HEADER.pack(kind, len(meta), len(a), len(b)), meta, a, b]


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes, bytes] | None:
    """The next frame (its metadata still JSON), or ``None`` at the end of the stream (the
    relay closed or died)."""
    # A relay killed with unread status lines resets the connection instead of closing it;
    # a frame cut short is one the relay died writing. Either way, what came before is whole.
    try:
        header = await reader.readexactly(HEADER.size)
        kind, meta_len, a_len, b_len = HEADER.unpack(header)
        payload = await reader.readexactly(meta_len + a_len + b_len)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return kind, payload[:meta_len], payload[meta_len:meta_len + a_len], \
        payload[meta_len + a_len:]


def line(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"
