"""Authenticating midway keys on the hot path: a bounded cache in front of the key store.

Found and not-found credentials are cached in two bounded LRUs (a flood of random keys can
only churn the second one). A poller reads the store's version counter every
``poll_interval`` seconds and evicts whatever changed, so a revocation or rotation made by any
instance (or the CLI) is refused everywhere within that interval. Expiry needs no poll: it is
checked on every lookup. If polling fails for ``stale_after`` seconds the cache is no longer
trusted and every lookup asks the store, which answers 503 when it is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

from midway.background import start_every
from midway.errors import MidwayError
from midway.exchange import Principal
from midway.keys import tokens
from midway.keys.model import Credential, KeyRecord
from midway.keys.store import KeyStore

log = logging.getLogger("midway.keys")

Entry = tuple[Credential, KeyRecord]


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self.data: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)

    def pop(self, key: str) -> None:
        self.data.pop(key, None)


class KeyCache:
    """``lookup(credential)`` for the built-in keys plugin's ``authenticate``."""

    _MISSING = "missing"

    def __init__(self, store: KeyStore, size: int = 10_000, poll_interval: float = 0.25,
                 stale_after: float = 5.0) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.stale_after = stale_after
        self._found = _LRU(size)
        self._missing = _LRU(size)
        self._version = -1
        self._fresh_at = 0.0  # monotonic time of the last successful poll
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._version = await self.store.version()
        self._fresh_at = time.monotonic()
        self._task = start_every(self.poll_interval, self.poll, log=log,
                                 name=f"key store {self.store.description}: polling")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll(self) -> None:
        version, key_ids, credential_ids = await self.store.changes_since(self._version)
        if version != self._version:
            self._evict(key_ids, credential_ids)
            self._version = version
        self._fresh_at = time.monotonic()

    def _evict(self, key_ids: set[str], credential_ids: set[str]) -> None:
        for cid in credential_ids:
            self._found.pop(cid)
            self._missing.pop(cid)
        if key_ids:
            for cid in [c for c, (_, rec) in self._found.data.items() if rec.id in key_ids]:
                self._found.pop(cid)

    def clear(self) -> None:
        self._found.data.clear()
        self._missing.data.clear()

    def lookup(self, credential: str | None) -> Principal | Awaitable[Principal | None] | None:
        """The principal of a valid, active midway key; ``None`` for anything else.

        Synchronous when the cache can answer; otherwise an awaitable that asks the store.
        """
        parsed = tokens.parse(credential) if credential else None
        if parsed is None:
            return None
        credential_id, secret = parsed
        if time.monotonic() - self._fresh_at > self.stale_after:
            self.clear()
        else:
            entry = self._found.get(credential_id)
            if entry is not None:
                return _check(entry, secret)
            if self._missing.get(credential_id) is not None:
                tokens.matches(None, None, secret)
                return None
        return self._lookup_store(credential_id, secret)

    async def _lookup_store(self, credential_id: str, secret: str) -> Principal | None:
        version = self._version
        try:
            entry = await self.store.find(credential_id)
        except Exception as exc:
            log.error("key store %s unreachable: %s", self.store.description,
                      type(exc).__name__)
            raise MidwayError(503, "midway cannot check keys right now; retry shortly",
                              error_type="api_error") from None
        # A change seen while the store was being read may be newer than this answer.
        if version == self._version:
            if entry is None:
                self._missing.put(credential_id, self._MISSING)
            else:
                self._found.put(credential_id, entry)
        if entry is None:
            tokens.matches(None, None, secret)
            return None
        return _check(entry, secret)


def _check(entry: Entry, secret: str) -> Principal | None:
    credential, record = entry
    valid = tokens.matches(credential.salt, credential.digest, secret)
    now = time.time()
    if not valid or not credential.active(now) or record.status(now) != "active":
        return None
    return record.principal(credential)
