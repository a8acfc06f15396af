"""Limiting admin-key guesses per client address without ever locking out the right key.

Each address has ``free`` wrong attempts per ``window`` seconds answered at once. Past that,
its attempts (login form or key headers alike) are evaluated one per ``spacing`` seconds, so
guessing from one address runs at one key per ``spacing`` however many connections it opens.
The right key still succeeds, after its turn: failures only ever slow an address down. An
attempt whose turn is more than ``max_wait`` seconds away (the address is flooding) is refused
without its key being looked at, so refusals tell a guesser nothing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable

import attrs

log = logging.getLogger("midway.dashboard")


class Outcome(enum.Enum):
    RIGHT = "right"
    WRONG = "wrong"
    BUSY = "busy"  # refused unevaluated: too many attempts from this address are waiting


@attrs.define
class _Client:
    failures: deque[float] = attrs.field(factory=deque)
    next_turn: float = 0.0


@attrs.define
class AttemptLimiter:
    free: int = 10
    window: float = 60.0
    spacing: float = 1.0
    max_wait: float = 15.0
    max_clients: int = 10_000
    _clients: dict[str, _Client] = attrs.field(factory=dict, init=False)

    async def attempt(self, client: str, check: Callable[[], bool]) -> Outcome:
        """``check()`` (a constant-time key comparison) when this address's turn comes."""
        now = time.monotonic()
        state = self._clients.get(client)
        if state is not None:
            while state.failures and now - state.failures[0] > self.window:
                state.failures.popleft()
            if len(state.failures) >= self.free:
                turn = max(now, state.next_turn)
                if turn - now > self.max_wait:
                    return Outcome.BUSY
                state.next_turn = turn + self.spacing
                await asyncio.sleep(turn - now)  # the policy's delay, not synchronisation
        if check():
            return Outcome.RIGHT
        self._failed(client)
        return Outcome.WRONG

    def limited(self, client: str) -> bool:
        """Whether this address's attempts are being spaced out now."""
        state = self._clients.get(client)
        now = time.monotonic()
        return state is not None and sum(now - t <= self.window
                                         for t in state.failures) >= self.free

    def _failed(self, client: str) -> None:
        state = self._clients.get(client)
        if state is None:
            if len(self._clients) >= self.max_clients:
                self._forget_idle()
            state = self._clients[client] = _Client()
        now = time.monotonic()
        state.failures.append(now)
        while len(state.failures) > self.free:
            state.failures.popleft()
        if len(state.failures) == self.free and now - state.failures[0] <= self.window and \
                state.next_turn <= now:
            log.warning("dashboard: %d wrong admin keys from %s within %.0f s; its attempts "
                        "are now evaluated one per %g s", self.free, client or "?",
                        self.window, self.spacing)

    def _forget_idle(self) -> None:
        now = time.monotonic()
        for name in [n for n, s in self._clients.items()
                     if not s.failures or now - s.failures[-1] > self.window]:
            del self._clients[name]
        if len(self._clients) >= self.max_clients:  # a spray of addresses: bounded anyway
            self._clients.clear()
