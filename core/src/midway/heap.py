"""Giving back to the system the memory a process has freed but its C allocator kept."""

from __future__ import annotations

import ctypes


def release_freed_memory() -> None:
    """``malloc_trim(0)``: glibc keeps the pages of freed chunks mapped (start-up's garbage:
    modules' compile-time temporaries, parsed configuration, a large body once relayed);
    this returns their whole free pages to the system. Nothing to do without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
