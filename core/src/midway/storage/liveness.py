"""Which instances sharing a store are alive: so that one instance can finish what a dead one
left (pending ledger rows, audit intents) without touching a live one's work.

An instance *claims* its number for as long as it runs; a peer asks whether another number is
:meth:`~Liveness.dead` and, while the answer is yes, holds that number's lock so that two peers
never finish the same dead instance's work. Several processes of one instance (audit's relay
and its writer process) claim the number *shared*: it is dead only once all of them are.

* SQLite: an exclusive ``flock`` on ``<namespace>-instances/<instance>.lock`` beside the
  database; the kernel drops it when the process dies, even by ``kill -9``.
* PostgreSQL: a session advisory lock held by a connection of the instance's own; the server
  drops it when that session ends (the process died, or the server restarted). A watchdog pings
  the connection every ``interval`` seconds and, when it is lost, reconnects and takes the lock
  again. Because a restart frees every lock at once, a free lock is trusted only once the server
  has been up for ``grace`` seconds: live instances have re-claimed by then. The server probes
  that session's TCP connection (:data:`KEEPALIVES`), so a machine that vanishes without
  closing it (power cut, network gone) loses its lock in about 25 seconds, not hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import secrets
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from midway.storage.retry import Episode

if TYPE_CHECKING:
    from midway.storage.database import Database, PostgresDatabase

log = logging.getLogger("midway.storage")

# TCP keepalives for the session holding a lock, probed by the server: a machine lost without
# a FIN or RST would otherwise keep its lock until the server's kernel gives up (2 h and more
# by default). Idle 10 s, then 3 probes 5 s apart: the lock of a lost machine frees in ~25 s.
# Keepalives start only on an idle connection: if the machine vanishes with the server's
# answer to a watchdog ping unacknowledged, the kernel retransmits instead (~15 min), which
# tcp_user_timeout (ms, PostgreSQL 12+) bounds the same.
KEEPALIVES = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5,
              "tcp_keepalives_count": 3, "tcp_user_timeout": 25000}
_SET_KEEPALIVES = "; ".join(f"SET {name} = {value}" for name, value in KEEPALIVES.items())


def new_instance() -> int:
    """A random instance number (1 … 2³¹−1), written on the rows an instance leaves pending."""
    return secrets.randbelow(2**31 - 1) + 1


class Liveness(Protocol):
    namespace: str

    async def claim(self, instance: int, shared: bool = False) -> None:
        """Hold ``instance``'s lock until :meth:`release` (kept across database restarts);
        ``shared``: beside other processes claiming the same number shared."""
        ...

    async def release(self) -> None: ...

    def dead(self, instance: int) -> contextlib.AbstractAsyncContextManager[bool]:
        """``async with liveness.dead(n) as gone:`` — ``gone`` is True when instance ``n`` is not
        running; its lock is then held until the block ends, so no other peer (and no restart
        of ``n``) acts on it meanwhile."""
        ...


def liveness(db: Database, namespace: str, *, interval: float = 1.0, grace: float = 10.0
             ) -> Liveness:
    """The liveness mechanism for instances sharing ``db``; ``namespace`` names the plugin."""
    if db.dialect == "sqlite":
        path: Path = db.path  # type: ignore[attr-defined]
        return FileLiveness(path.parent / f"{namespace}-instances", namespace)
    return PostgresLiveness(db, namespace, interval=interval, grace=grace)  # type: ignore[arg-type]


class FileLiveness:
    def __init__(self, directory: Path, namespace: str) -> None:
        self.directory = directory
        self.namespace = namespace
        self._held: IO[bytes] | None = None
        self._path: Path | None = None

    async def claim(self, instance: int, shared: bool = False) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{instance}.lock"
        handle = open(path, "ab")  # noqa: SIM115, ASYNC230 - a lock file held for the lifetime
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        self._held, self._path = handle, path

    async def release(self) -> None:
        if self._held is not None and self._path is not None:
            try:  # the last holder removes the file (a shared holder may not be the last)
                fcntl.flock(self._held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                self._path.unlink(missing_ok=True)
            self._held.close()
            self._held = self._path = None

    @contextlib.asynccontextmanager
    async def dead(self, instance: int) -> AsyncIterator[bool]:
        path = self.directory / f"{instance}.lock"
        self.directory.mkdir(parents=True, exist_ok=True)
        # Created if missing (never claimed here, or cleaned up after its death), so that the
        # lock is held while the caller acts whichever way.
        handle = open(path, "ab")  # noqa: SIM115, ASYNC230
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            yield False
            return
        try:
            yield True
            path.unlink(missing_ok=True)
        finally:
            handle.close()


class PostgresLiveness:
    def __init__(self, db: PostgresDatabase, namespace: str, *, interval: float = 1.0,
                 grace: float = 10.0) -> None:
        self.db = db
        self.namespace = namespace
        self.interval = interval
        self.grace = grace
        # the two-key form of advisory locks: (namespace, instance)
        self.key = zlib.crc32(f"midway {namespace}".encode()) & 0x7FFFFFFF
        self.instance: int | None = None
        self.shared = False
        self._conn: Any = None
        self._watch: asyncio.Task[None] | None = None
        self.reclaims = 0  # how often the lock was taken again after the session was lost

    async def claim(self, instance: int, shared: bool = False) -> None:
        self.instance, self.shared = instance, shared
        self._conn = await self._take()
        self._watch = asyncio.create_task(self._watchdog(), name=f"{self.namespace}-liveness")

    async def _take(self) -> Any:
        conn = await self.db.connect()
        try:
            await conn.execute(_SET_KEEPALIVES)  # before the lock: every session holding it
            take = "pg_advisory_lock_shared" if self.shared else "pg_advisory_lock"
            await conn.execute(f"SELECT {take}($1, $2)", self.key, self.instance)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _watchdog(self) -> None:
        episode = Episode(log, f"{self.namespace}: instance {self.instance}'s liveness lock")
        while True:
            await asyncio.sleep(self.interval)
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await self._take()
                    self.reclaims += 1
                else:
                    await self._conn.fetchval("SELECT 1", timeout=self.interval * 5)
            except Exception as exc:
                episode.failed(exc, "taking it again as soon as PostgreSQL answers")
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.terminate()
                continue
            episode.ok()

    async def release(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close()

    @contextlib.asynccontextmanager
    async def dead(self, instance: int) -> AsyncIterator[bool]:
        if instance == self.instance:
            yield False
            return
        conn = await self.db.connect()
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", self.key,
                                       instance):
                yield False
                return
            try:
                # Just after a restart every lock is free: wait until live instances re-claimed.
                uptime = await conn.fetchval("SELECT EXTRACT(EPOCH FROM now() - "
                                             "pg_postmaster_start_time())")
                yield float(uptime) >= self.grace
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", self.key, instance)
        finally:
            await conn.close()
