"""One event-loop timer for many deadlines.

A timer per connection or per wait costs a handle, a libuv timer and a bound method each (~450
to ~700 bytes while it is armed, and a set and a cancel per use): where many things wait under
deadlines that mostly pass unmet, one timer, due when the earliest would be, checks them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedTimer(Generic[T]):
    """Items watched under deadlines (event loop time) and the one timer that checks them.

    ``check(item, now)`` is called for each item when the timer fires: it returns the item's
    next deadline, or ``None`` when it no longer waits (done, or acted on because it is
    late), and the item is then forgotten. The timer fires ``slack`` seconds before the
    earliest deadline (a check that treats as late what is that close keeps ahead of another
    timer armed later for the same moment).
    """

    __slots__ = ("check", "due", "slack", "timer", "waiting")

    def __init__(self, check: Callable[[T, float], float | None], slack: float = 0.0) -> None:
        self.check = check
        self.slack = slack
        self.waiting: set[T] = set()  # (or were: dropped at the next check)
        self.timer: asyncio.TimerHandle | None = None
        self.due = 0.0

    def watch(self, item: T, due: float, loop: asyncio.AbstractEventLoop) -> None:
        """Check ``item`` by ``due`` at the latest (the timer is re-armed if that is sooner)."""
        self.waiting.add(item)
        if self.timer is None or due < self.due:
            if self.timer is not None:
                self.timer.cancel()
            self.due = due
            self.timer = loop.call_at(due - self.slack, self._fire, loop)

    def discard(self, item: T) -> None:
        """Stop watching ``item`` (the timer stays armed: its next check finds less to do)."""
        self.waiting.discard(item)

    def cancel(self) -> None:
        """Stop the timer and forget every item."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.waiting.clear()

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        now = loop.time()
        check = self.check
        earliest: float | None = None
        for item in list(self.waiting):
            due = check(item, now)
            if due is None:
                self.waiting.discard(item)
            elif earliest is None or due < earliest:
                earliest = due
        if earliest is not None:
            self.due = earliest
            self.timer = loop.call_at(earliest - self.slack, self._fire, loop)
