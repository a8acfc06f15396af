"""A shared-memory ring from the relay to its writer process: a frame costs the relay a copy.

The relay (one producer) copies frames (frames.py) into a memory file both processes map
and advances ``head``; the writer (one consumer) reads them up to a ``head`` the relay told it
over the socket (a wake-up: one per turn of the relay's event loop, carrying the head, so the
writer never reads bytes the relay's stores have not made visible) and advances ``tail``,
which tells the relay how much room there is. A frame that does not fit before the end of
the ring is preceded by a wrap marker and starts again at offset 0.

Resident memory follows what is in flight, not the ring's size: the memory file's pages are
allocated as the relay first writes them, and the writer frees (punches out) the pages of the
room it gives back, before it gives it back — except the ring's first ``hot`` bytes, which
stay allocated: while the writer keeps up, the relay goes back to the start of the ring as soon
as a frame would run past them (and the writer has taken what was there), so a writer that
keeps up costs both processes ``hot`` bytes (each process's resident memory counts the shared
pages it has touched), and the relay writes into pages already mapped instead of taking a page
fault (and the kernel a page to clear) every 4 KiB. ``handoff_bytes`` bounds how far the writer
may fall behind. So that the page holding ``tail`` can be freed with the rest once ``tail``
moves past it, the relay leaves one page of the ring unused (``guard``): it never writes less
than a page behind ``tail``.

What the relay copied into the ring outlives the relay: if it is killed, the writer reads on
up to the last head in the ring (a dead process's stores are all visible). And it outlives
the writer: ``tail`` moves only past frames the writer has committed, so a writer started
after one was killed reads again what the dead one had taken but not committed.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile

from midway_audit.handoff.frames import HEADER

_POS = struct.Struct("<Q")
_PAGE = mmap.PAGESIZE
# Frees a range of the memory file (both processes' mappings of it) where Linux can.
_REMOVE: int | None = getattr(mmap, "MADV_REMOVE", None)
_HEAD_AT, _TAIL_AT = 0, 64  # head and tail on cache lines of their own
_HOT_AT = 8  # the hot size, set once by create()
HOT = 1024 * 1024  # the hot start of a ring (at most a quarter of it): see create()
DATA = 128  # frames start here
WRAP = 0  # a frame kind: the rest of the ring is empty, go on at offset 0


def create(size: int, hot: int = 0) -> int:
    """A memory file of ``size`` bytes for a ring; the caller passes its fd to the writer.
    Its first ``hot`` bytes of frames are never freed and written again first (module doc);
    1 MiB holds a 16 KB request's frames for the 60 ms a writer keeping up at 1,000 requests
    a second may take to give their room back."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("midway-audit-ring")
    else:  # not Linux: an unlinked temporary file does the same
        handle, path = tempfile.mkstemp(prefix="midway-audit-ring-")
        os.unlink(path)
        fd = handle
    os.ftruncate(fd, size)
    if hot:
        with mmap.mmap(fd, DATA, flags=mmap.MAP_SHARED) as mm:
            _POS.pack_into(mm, _HOT_AT, min(hot, (size - DATA) // 4))
    return fd


class Ring:
    def __init__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        # Not populated: the pages the writer frees behind its tail are allocated again as the
        # relay writes them (measured: 3 minor faults per request with a 16 KB body, against
        # 0.3–0.7; populating the ring held 2 × handoff_bytes resident in the two processes).
        self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        self.capacity = size - DATA
        # Rings too small to free pages of (tests') have no guard page either.
        self.guard = _PAGE if _REMOVE is not None and self.capacity >= 64 * _PAGE else 0
        self.hot = int(_POS.unpack_from(self.mm, _HOT_AT)[0])

    def close(self) -> None:
        self.mm.close()

    @property
    def head(self) -> int:
        return int(_POS.unpack_from(self.mm, _HEAD_AT)[0])

    @property
    def tail(self) -> int:
        return int(_POS.unpack_from(self.mm, _TAIL_AT)[0])


class RingWriter(Ring):
    """The relay's end. Its hot path is one call per frame: the header is packed straight
    into the ring, and the tail and head are read and set through a view, not ``struct``."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.written = self.head  # the head as this process last set it
        self.max_frame = self.capacity // 4  # larger frames go over the socket
        self._head_view = memoryview(self.mm)[_HEAD_AT:_HEAD_AT + 8].cast("Q")
        self._tail_view = memoryview(self.mm)[_TAIL_AT:_TAIL_AT + 8].cast("Q")
        # The last early wrap (back to the hot start): where its skip of the ring's cold rest
        # ends and how long it is. Not room in use: the writer is not that far behind.
        self._skip_end = self._skip = 0

    def close(self) -> None:
        self._head_view.release()  # a view left open would keep close() from unmapping
        self._tail_view.release()
        super().close()

    def used(self) -> int:
        tail = self._tail_view[0]
        used = self.written - tail
        if tail < self._skip_end:
            used -= min(self._skip, self._skip_end - tail)
        return int(used)

    def put(self, kind: int, meta: bytes, a: bytes = b"", b: bytes = b"") -> bool:
        """Copy one frame in; ``False`` when there is no room now, or when it is larger than
        ``max_frame`` (such a frame goes over the socket)."""
        size = HEADER.size + len(meta) + len(a) + len(b)
        if size > self.max_frame:
            return False
        pos = self.written
        cap = self.capacity
        offset = pos % cap
        to_end = cap - offset
        room = cap - self.guard - (pos - self._tail_view[0])
        if to_end < size:
            wrap = True
        elif self.hot and offset and offset + size > self.hot and size + to_end <= room:
            # back to the hot start, whose pages are resident, the writer having taken what
            # was there (else on into the cold rest, whose pages are touched anew)
            wrap = True
            self._skip, self._skip_end = to_end, pos + to_end
        else:
            wrap = False
        if size + (to_end if wrap else 0) > room:
            return False
        mm = self.mm
        if wrap:  # mark the rest of the ring empty (when a header fits)
            if to_end >= HEADER.size:
                HEADER.pack_into(mm, DATA + offset, WRAP, 0, 0, 0)
            pos += to_end
            offset = 0
        at = DATA + offset
        HEADER.pack_into(mm, at, kind, len(meta), len(a), len(b))
        at += HEADER.size
        end = at + len(meta)
        mm[at:end] = meta
        if a:
            at, end = end, end + len(a)
            mm[at:end] = a
        if b:
            at, end = end, end + len(b)
            mm[at:end] = b
        self.written = pos + size
        self._head_view[0] = self.written
        return True


class RingReader(Ring):
    """The writer's end. It reads at ``pos`` and gives room back (``tail``) only up to what
    it has committed: a writer started after one was killed reads again what the dead one
    had taken but not committed."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.pos = self.tail  # frames before pos are taken; before tail, done with

    def peek(self, upto: int) -> tuple[int, bytes, bytes, bytes, int] | None:
        """The next frame before position ``upto`` (copied out) and where it ends, or
        ``None``; ``take`` it up to that end (and ``release`` the room once it is
        committed)."""
        mm = self.mm
        cap = self.capacity
        pos = self.pos
        while pos < upto:
            offset = pos % cap
            to_end = cap - offset
            at = DATA + offset
            if to_end < HEADER.size or HEADER.unpack_from(mm, at)[0] == WRAP:
                pos += to_end
                self.pos = pos
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

    def take(self, end: int) -> None:
        """The frame up to ``end`` is taken (its room is not given back yet)."""
        self.pos = end

    def release(self, pos: int) -> None:
        """Give the relay the room up to ``pos`` back (never beyond what is taken), its whole
        pages freed first: once ``tail`` moves the relay may write there again."""
        pos = min(pos, self.pos)
        tail = self.tail
        if pos > tail:
            self._free(tail, pos)
            _POS.pack_into(self.mm, _TAIL_AT, pos)

    def _free(self, tail: int, end: int) -> None:
        """Free the memory file's pages from the one holding ``tail`` (what lies before
        ``tail`` in it is done with, and the guard keeps the relay out of it) up to the one
        holding ``end`` (which may hold frames not done with); never the first page, where
        ``head`` and ``tail`` are, nor those of the hot start (module doc)."""
        if not self.guard or _REMOVE is None:
            return
        cap = self.capacity
        start, end = tail % cap, (tail % cap) + min(end - tail, cap)
        # one range of the memory file, or two when it wraps
        spans = [(start, end)] if end <= cap else [(start, cap), (0, end - cap)]
        kept = max(-(-(DATA + self.hot) // _PAGE) * _PAGE, _PAGE)  # the hot pages' end
        for lo, hi in spans:
            first = max((DATA + lo) // _PAGE * _PAGE, kept)
            last = (DATA + hi) // _PAGE * _PAGE
            if last > first:
                self.mm.madvise(_REMOVE, first, last - first)

    def advance(self, end: int) -> None:
        """Take the frame up to ``end`` and give its room back at once."""
        self.take(end)
        self.release(end)
