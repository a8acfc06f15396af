"""A shared-memory ring from the relay to its writer process: a frame costs the relay a copy.

The relay (one producer) copies frames (frames.py) into a memory file both processes map
and advances ``head``; the writer (one consumer) reads them up to a ``head`` the relay told it
over the socket (a wake-up: one per turn of the relay's event loop, carrying the head, so the
writer never reads bytes the relay's stores have not made visible) and advances ``tail``,
which tells the relay how much room there is. A frame that does not fit before the end of
the ring is preceded by a wrap marker and starts again at offset 0.

What the relay copied into the ring outlives the relay: if it is killed, the writer reads on
up to the last head in the ring (a dead process's stores are all visible).
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile

from midway_audit.frames import HEADER

_POS = struct.Struct("<Q")
_HEAD_AT, _TAIL_AT = 0, 64  # head and tail on cache lines of their own
DATA = 128  # frames start here
WRAP = 0  # a frame kind: the rest of the ring is empty, go on at offset 0


def create(size: int) -> int:
    """A memory file of ``size`` bytes for a ring; the caller passes its fd to the writer."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("midway-audit-ring")
    else:  # not Linux: an unlinked temporary file does the same
        handle, path = tempfile.mkstemp(prefix="midway-audit-ring-")
        os.unlink(path)
        fd = handle
    os.ftruncate(fd, size)
    return fd


class Ring:
    def __init__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        # Populated now: a page first touched under load costs the relay a page fault.
        self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        self.capacity = size - DATA

    def close(self) -> None:
        self.mm.close()

    @property
    def head(self) -> int:
        return int(_POS.unpack_from(self.mm, _HEAD_AT)[0])

    @property
    def tail(self) -> int:
        return int(_POS.unpack_from(self.mm, _TAIL_AT)[0])


class RingWriter(Ring):
    """The relay's end."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.written = self.head  # the head as this process last set it
        self.max_frame = self.capacity // 4  # larger frames go over the socket

    def used(self) -> int:
        return self.written - self.tail

    def put(self, pieces: list[bytes], size: int) -> bool:
        """Copy one frame of ``size`` bytes in; ``False`` when there is no room now."""
        pos = self.written
        cap = self.capacity
        offset = pos % cap
        to_end = cap - offset
        need = size + (to_end if to_end < size else 0)
        if need > cap - (pos - self.tail):
            return False
        mm = self.mm
        if to_end < size:  # wrap: mark the rest of the ring empty (when a header fits)
            if to_end >= HEADER.size:
                HEADER.pack_into(mm, DATA + offset, WRAP, 0, 0, 0)
            pos += to_end
            offset = 0
        at = DATA + offset
        for piece in pieces:
            end = at + len(piece)
            mm[at:end] = piece
            at = end
        self.written = pos + size
        _POS.pack_into(mm, _HEAD_AT, self.written)
        return True


class RingReader(Ring):
    """The writer's end."""

    def peek(self, upto: int) -> tuple[int, bytes, bytes, bytes, int] | None:
        """The next frame before position ``upto`` (copied out) and where it ends, or
        ``None``; ``advance`` to that end once it is taken."""
        mm = self.mm
        cap = self.capacity
        pos = self.tail
        while pos < upto:
            offset = pos % cap
            to_end = cap - offset
            at = DATA + offset
            if to_end < HEADER.size or HEADER.unpack_from(mm, at)[0] == WRAP:
                pos += to_end
                self.advance(pos)
                continue
            kind, meta_len, a_len, b_len = HEADER.unpack_from(mm, at)
            at += HEADER.size
            meta = mm[at:at + meta_len]
            at += meta_len
            a = mm[at:at + a_len]
            at += a_len
            b = mm[at:at + b_len]
            return kind, meta, a, b, pos + HEADER.size + meta_len + a_len + b_len
        return None

    def advance(self, pos: int) -> None:
        """Give the relay the room up to ``pos`` back."""
        _POS.pack_into(self.mm, _TAIL_AT, pos)
