"""Giving back to the system the memory a process has freed but its C allocator kept."""

from __future__ import annotations

import ctypes
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (audit's writer process imports this module: not aiohttp for it)
    from aiohttp import StreamReader


def release_freed_memory() -> None:
    """``malloc_trim(0)``: glibc keeps the pages of freed chunks mapped (start-up's garbage:
    modules' compile-time temporaries, parsed configuration, a large body once relayed);
    this returns their whole free pages to the system. Nothing to do without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def drop_read_buffer(reader: StreamReader) -> None:
    """A request body read to its end: aiohttp's reader keeps its deque, empty but ~760 bytes,
    for as long as the request lasts (a stream's whole life); an empty tuple takes its place.
    An ended reader reads ``b""`` from either, and aiohttp refuses to feed one before it would
    touch the buffer. Nothing for a reader not at its end, or not one of aiohttp's."""
    if type(getattr(reader, "_buffer", None)) is deque and reader.at_eof():
        reader._buffer = ()  # type: ignore[assignment]
