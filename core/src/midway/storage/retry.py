"""Writes that must land: retry what failed because the database blinked, log once per outage.

A settlement after the answer has gone to the client, a record the audit writer holds, a
reservation released at shutdown: each is retried on transient errors (connection lost, server
restarting, lock timeouts, serialization failures and deadlocks) with capped exponential backoff,
and the log gets one line when an outage starts and one when it ends, never one per attempt.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import logging
import math
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from midway.config import ConfigError

T = TypeVar("T")

# Seconds start-up waits for a store it cannot reach (the ``store_wait`` setting; the server
# sets it, read commands leave it at 0 and fail at once).
STORE_WAIT: contextvars.ContextVar[float] = contextvars.ContextVar("midway_store_wait",
                                                                   default=0.0)


class StoreUnavailable(ConfigError):
    """A store start-up could not use: unreachable for ``store_wait`` seconds, credentials
    refused, no such database. One line naming the store; no traceback."""

_SQLITE_TRANSIENT = ("locked", "busy", "disk i/o error", "unable to open")
# SQLSTATE classes and codes worth another try: connection exceptions, operator intervention
# (server shutting down or restarting), insufficient resources, serialization failure, deadlock,
# lock not available.
_PG_TRANSIENT_CLASSES = ("08", "57", "53")
_PG_TRANSIENT_CODES = ("40001", "40P01", "55P03")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away if the same work is tried again a little later."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(word in text for word in _SQLITE_TRANSIENT)
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(_PG_TRANSIENT_CLASSES) or sqlstate in _PG_TRANSIENT_CODES
    module = type(exc).__module__
    if module.startswith("redis"):  # redis-py's own ConnectionError and TimeoutError
        names = {c.__name__ for c in type(exc).__mro__}
        return bool(names & {"ConnectionError", "TimeoutError"}) and not \
            names & {"AuthenticationError", "AuthorizationError"}
    # asyncpg's "connection is closed" / "another operation is in progress" after a restart
    return module.startswith("asyncpg") and type(exc).__name__ in (
        "InterfaceError", "ConnectionDoesNotExistError", "InternalClientError")


def _disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or \
        "database or disk is full" in str(exc) or "No space left on device" in str(exc)


def describe(exc: BaseException) -> str:
    """A short cause for a log line: ``disk full``, ``connection refused``, the message.

    A full disk is named whatever error it caused next (SQLite's "cannot rollback - no
    transaction is active" after its automatic rollback, say): the chain of causes is read."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if _disk_full(seen):
            return "disk full"
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


class Episode:
    """Logs the start and the end of a run of failures of one kind of work, not each failure."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what
        self.failures = 0
        self.since = 0.0

    def failed(self, exc: BaseException, retrying: str = "") -> None:
        if self.failures == 0:
            self.since = time.monotonic()
            # an error that is no outage (a bug) keeps its traceback, once
            self.log.warning("%s failed (%s)%s", self.what, describe(exc),
                             f"; {retrying}" if retrying else "",
                             exc_info=None if is_transient(exc) else exc)
        self.failures += 1

    def ok(self) -> None:
        if self.failures:
            self.log.warning("%s works again after %d failed attempt(s) over %.1f s",
                             self.what, self.failures, time.monotonic() - self.since)
            self.failures = 0


async def retrying(work: Callable[[], Awaitable[T]], *, what: str, log: logging.Logger,
                   deadline: float = 60.0, first_delay: float = 0.05,
                   max_delay: float = 2.0, episode: Episode | None = None) -> T:
    """Run ``work`` until it succeeds, retrying transient errors for up to ``deadline`` seconds.

    :param work: makes a fresh attempt each call (a whole transaction: it must be safe to run
        again after a failure, which a rolled-back transaction is).
    :param what: names the work in the log, e.g. ``"billing: settling req_1"``.
    :param deadline: seconds; ``math.inf`` retries until the work lands (or is cancelled).
    :param episode: an :class:`Episode` shared by several works, so that an outage they all
        meet is logged once; by default each call logs its own.
    :raises: the last error once ``deadline`` has passed, or at once a non-transient one.
    """
    episode = Episode(log, what) if episode is None else episode
    wait = f"retrying for up to {deadline:.0f} s" if deadline < math.inf else \
        "retrying until it lands"
    end = time.monotonic() + deadline
    delay = first_delay
    while True:
        try:
            result = await work()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > end:
                if episode.failures:
                    log.error("%s: giving up after %d attempt(s): %s", what,
                              episode.failures + 1, describe(exc))
                raise
            episode.failed(exc, wait)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_delay)
            continue
        episode.ok()
        return result


async def reach(work: Callable[[], Awaitable[T]], *, where: str, log: logging.Logger) -> T:
    """Start-up's first contact with a store: ``work`` (a connection, a ping) tried again
    while the store cannot be reached, for up to ``store_wait`` seconds — a database or Redis
    started beside midway (compose, Kubernetes) may answer a moment later. One line in the log
    while it waits; then :class:`StoreUnavailable` naming ``where`` (``"[billing] store:
    PostgreSQL postgresql://…"``, password masked)."""
    wait = STORE_WAIT.get()
    try:
        return await retrying(work, what=where, log=log, deadline=wait, first_delay=0.25)
    except Exception as exc:
        if not is_transient(exc):
            raise
        waited = f" for {wait:g} s" if wait > 0 else ""
        raise StoreUnavailable(
            f"{where}: unreachable{waited} ({describe(exc)}); check that it is running and "
            "reachable at that address (`midway config check` tests every store)") from None
