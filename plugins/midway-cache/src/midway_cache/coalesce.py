"""Request coalescing: identical concurrent misses send one upstream request.

The first miss of a key leads: it goes upstream and stores the answer. Later identical requests
follow: they wait until the leader is done, then read the stored answer (or, if the leader got
none, go upstream themselves). Within one process followers wait on a future; across
instances the leader holds a lock in the shared store (with a TTL, so a crashed leader frees
it) and followers poll the store.
"""

from __future__ import annotations

import asyncio
import time

from midway_cache.stores.base import Store

_POLL_FIRST = 0.02
_POLL_MAX = 0.25


class Coalescer:
    def __init__(self, store: Store, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self._flights: dict[str, asyncio.Future[None]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def join(self, key: str) -> bool:
        """``True``: the caller leads and must call :meth:`release`; ``False``: a leader has
        finished (or the wait timed out) and the caller should look the key up again."""
        flight = self._flights.get(key)
        if flight is not None:
            try:
                await asyncio.wait_for(asyncio.shield(flight), self.timeout)
            except TimeoutError:
                pass
            return False
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            leads = await self.store.lock(key, self.timeout)
        except BaseException:  # the store is unreachable: followers must not wait on us
            self._done(key, flight)
            raise
        if leads:
            return True
        try:  # another instance leads
            await self._poll(key)
        finally:
            self._done(key, flight)
        return False

    async def _poll(self, key: str) -> None:
        deadline = time.monotonic() + self.timeout
        delay = _POLL_FIRST
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            if await self.store.get(key, time.time()) is not None or \
                    not await self.store.locked(key):
                return
            delay = min(_POLL_MAX, delay * 1.5)

    async def release(self, key: str) -> None:
        flight = self._flights.get(key)
        try:
            await self.store.unlock(key)
        finally:
            if flight is not None:
                self._done(key, flight)

    def _done(self, key: str, flight: asyncio.Future[None]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.done():
            flight.set_result(None)
