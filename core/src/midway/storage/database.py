"""One database API over SQLite (embedded) and PostgreSQL (shared).

SQL is written once, with ``?`` placeholders (numbered for PostgreSQL) and a schema whose column
types are written ``{int}``, ``{real}``, ``{blob}`` (see :class:`Schema`). A unit of work is a
coroutine function given a :class:`Tx`::

    async def reserve(tx: Tx) -> bool:
        row = await tx.fetchone("SELECT spent FROM counters WHERE key = ?", key)
        ...
    admitted = await db.run(reserve)        # one transaction, committed or rolled back whole

On SQLite the whole unit runs on the store's own thread (one hop from the event loop, however
many statements it has; the loop never waits on disk) — or, for a unit its caller declares
``brief``, on the loop's own thread when the database is free at once (see :meth:`Database.run`);
on PostgreSQL on a pooled connection. A unit must only talk to its ``tx``: on SQLite it is
driven without an event loop (awaiting anything else fails the unit).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import logging
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import attrs

from midway.storage.url import StoreURL, StoreURLError
from midway.storage.wal import enable_wal

log = logging.getLogger("midway.storage")

T = TypeVar("T")
Row = dict[str, Any]
Dialect = Literal["sqlite", "postgresql"]

_TYPES: dict[str, dict[str, str]] = {
    "sqlite": {"int": "INTEGER", "real": "REAL", "blob": "BLOB", "text": "TEXT",
               "without_rowid": " WITHOUT ROWID"},
    "postgresql": {"int": "BIGINT", "real": "DOUBLE PRECISION", "blob": "BYTEA", "text": "TEXT",
                   "without_rowid": ""},
}


# Whether opening a store may create it. Commands that only read turn it off (see
# midway.cli.settings_options), so a mistyped --data-dir never leaves an empty store behind.
_MAY_CREATE: contextvars.ContextVar[bool] = contextvars.ContextVar("midway_may_create_stores",
                                                                   default=True)


class StoreMissing(StoreURLError):
    """A store was to be opened where none exists, and creating one was not allowed."""


@contextlib.contextmanager
def stores_created(allowed: bool) -> Iterator[None]:
    """Within this block (and the ``asyncio.run`` calls it makes), opening an embedded store
    that does not exist creates it only if ``allowed``; otherwise it raises
    :class:`StoreMissing` naming the path. PostgreSQL stores are not affected."""
    token = _MAY_CREATE.set(allowed)
    try:
        yield
    finally:
        _MAY_CREATE.reset(token)


@attrs.frozen
class Schema:
    """The tables of one store: a name (for locks and messages) and its DDL.

    ``ddl`` is a ``;``-separated script of ``CREATE TABLE IF NOT EXISTS`` / ``CREATE INDEX IF NOT
    EXISTS`` statements in which column types that differ between the dialects are written
    ``{int}`` (INTEGER / BIGINT), ``{real}`` (REAL / DOUBLE PRECISION) and ``{blob}`` (BLOB /
    BYTEA). A table that ends ``){without_rowid}`` is an SQLite ``WITHOUT ROWID`` table when
    created (one B-tree, keyed by its primary key, instead of a rowid table and its key's
    index: a row written or removed by key changes one page, not two); on PostgreSQL, and for
    a table that existed before, nothing changes. Adding a column to the DDL is a migration:
    :meth:`Database.open` and ``midway db upgrade`` add it to existing tables (give it a
    default, or allow NULL).
    """

    name: str
    ddl: str

    def statements(self, dialect: Dialect) -> list[str]:
        script = self.ddl.format(**_TYPES[dialect])
        return [s.strip() for s in script.split(";") if s.strip()]

    def tables(self) -> dict[str, dict[str, str]]:
        """Table → column → definition, read by running the SQLite rendering in memory."""
        from midway.storage.schema import column_definitions

        return column_definitions(self.statements("sqlite"))


class Tx(Protocol):
    """One transaction. Every method runs one statement with ``?`` placeholders."""

    dialect: Dialect

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchone(self, sql: str, *args: Any) -> Row | None: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; the number of rows it changed."""
        ...
    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None: ...


class Database:
    """A store's database. Open it with its :class:`Schema`; close it at shutdown."""

    # How many held transactions were undone after their held units' callers had been told
    # their outcomes, and what undid the last one (see run()'s ``hold``).
    held_lost = 0
    held_error: BaseException | None = None

    dialect: Dialect
    store: StoreURL

    async def open(self, schema: Schema) -> list[str]:
        """Connect, and create (or add the missing columns of) ``schema``'s tables; what
        changed, one line per table created or altered."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def run(self, unit: Callable[[Tx], Awaitable[T]], *, durable: bool = True,
                  defer: bool = False, brief: bool = False, hold: bool = False) -> T:
        """Run ``unit`` in one transaction: committed when it returns, rolled back if it
        raises (the exception propagates).

        ``durable=False``: the commit need only outlive the process, not the machine or the
        database server — for notes that a later, durable commit supersedes (SQLite: no fsync
        even with ``synchronous="full"``; PostgreSQL: ``synchronous_commit`` off).

        ``defer=True``: nobody is waiting for this unit to land soon (a settlement written
        after its answer was sent). On the SQLite store thread it does not wake the thread:
        it is run, in its place in the queue, with the next unit that does (one transaction
        for both), or after at most ``DEFER_MAX`` seconds. Units never overtake one another:
        a unit queued after it still sees what it wrote. Elsewhere it runs at once.

        ``brief=True``: the unit is a few statements on rows found by key (never a scan), so
        that running it on the event loop's thread costs less than handing it to the SQLite
        store thread and back (two thread switches each way, the most of a small unit's
        cost). On SQLite with ``synchronous="normal"`` (no fsync per commit) such units run
        there, at the end of the loop iteration that queued them (one transaction for those
        queued together, deferred ones before them), when the database's write lock is free
        at once; a unit that finds it taken (another process writing, the store thread busy)
        goes to the store thread as any other. Checkpoints (which fsync) stay on the store
        thread. A brief unit must have no effect but through its ``tx`` (SQLite may run it
        twice: brief units queued together run first with no savepoint between them, and
        again one by one if one of them raises). Elsewhere it changes nothing.

        ``hold=True`` (with ``brief``): the caller queues another brief unit as soon as it
        learns this one's outcome (a reservation, then the write-ahead it admits), and the
        two may share a commit. Where a brief unit runs on the loop (above), its outcome is
        delivered before the commit, and the transaction is kept open (the write lock held)
        until the callbacks of the next loop iteration have run: the brief units they queue
        run in it, then it commits, and only then do they (and the other units in it) learn
        their outcomes. So a unit queued after a held one still sees what it wrote, and what
        another process sees never changes between them. Should that commit fail (or a unit
        that joined it raise), the whole transaction is undone: the other units in it run
        again without it, but the held unit's effects are lost though its caller was told
        they happened, and ``held_lost`` grows (``held_error`` says why). Its caller copes:
        it notes ``held_lost`` on learning the outcome, and its next unit, should it find the
        count grown (it runs again, or after the held transaction), checks that what the held
        unit wrote is there, and else fails (with ``held_error``, say). Elsewhere it changes
        nothing (and ``held_lost`` stays 0)."""
        raise NotImplementedError

    def submit(self, unit: Callable[[Tx], Awaitable[T]], *, durable: bool = True,
               defer: bool = False, brief: bool = False, hold: bool = False
               ) -> asyncio.Future[T]:
        """:meth:`run` for a caller that does not wait for the outcome where it is: the unit
        is queued at once, and the future (awaited, or given a done callback) has its outcome.
        On SQLite no coroutine and no task are made for it (a task's cost is several times a
        brief unit's own); elsewhere it is ``run`` in a task. (A held unit's future is done
        before its commit: see ``hold`` there, and ``held_lost``.)"""
        return asyncio.ensure_future(self.run(unit, durable=durable, defer=defer, brief=brief,
                                              hold=hold))

    async def ping(self) -> str | None:
        """``None`` if the store answers a trivial query, else what went wrong, in words (for
        ``/readyz``, whose caller bounds the time; never raises, never shows a password)."""
        from midway.storage.retry import describe

        try:
            await self.run(lambda tx: tx.fetchval("SELECT 1"), durable=False)
        except Exception as exc:
            return f"{self.store.masked}: {describe(exc)}"
        return None

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self.run(lambda tx: tx.fetch(sql, *args))

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        return await self.run(lambda tx: tx.fetchone(sql, *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.run(lambda tx: tx.fetchval(sql, *args))

    async def execute(self, sql: str, *args: Any) -> int:
        return await self.run(lambda tx: tx.execute(sql, *args))

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        rows = list(args)
        await self.run(lambda tx: tx.executemany(sql, rows))


# -- SQLite ------------------------------------------------------------------------------------

class SQLiteDatabase(Database):
    """An SQLite file in WAL mode, shared safely by several processes (``--workers``).

    :param synchronous: ``"normal"`` (a commit survives a process crash) or ``"full"`` (and a
        power cut: an fsync per commit).
    :param inline: run statements on the caller's thread — for a process of its own with no
        event loop to keep responsive (the audit writer). Otherwise a dedicated thread runs them.

    The store's thread has no event loop of its own: it waits on a queue and drives each unit's
    coroutine to its end directly (a unit only awaits its ``tx``, whose methods never suspend),
    so a hop costs one wake-up of that thread and one of the caller's loop. ``brief`` units
    may instead run on the caller's loop, on a connection of their own that never waits for
    the write lock and never checkpoints (see :meth:`Database.run`).

    Whoever runs queued units — the store thread, or a loop running brief ones — holds the
    *drain* (``_draining``, changed under ``_lock``): one at a time, in queue order, so units
    never overtake one another.
    """

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, *, synchronous: str = "normal", inline: bool = False) -> None:
        if synchronous not in ("normal", "full"):
            raise StoreURLError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.path = path
        self.store = StoreURL("sqlite", path=path)
        self.synchronous = synchronous
        self.inline = inline
        self._conn: _Connection | None = None
        # brief units' connection, used on the loop by the drain's holder (see run())
        self._fast: _Connection | None = None
        self._thread: threading.Thread | None = None
        # what the store thread is to do: drain the queue (_DRAIN), run a job, or stop (None)
        self._jobs: queue.SimpleQueue[_Job | None] | None = None
        self._queue: collections.deque[_Queued] = collections.deque()
        self._lock = threading.Lock()
        self._draining = False
        # the wake-up that runs deferred units nothing else has carried along (see run())
        self._deferred: asyncio.TimerHandle | None = None
        # the end of a held transaction on the fast connection (see run()'s hold), when due,
        # and the outcomes of the units in it that were not held (told once it commits)
        self._held: asyncio.Handle | None = None
        self._held_back: list[tuple[_Queued, Any, BaseException | None]] = []
        # commits on the fast connection since the last checkpoint, and how many between two
        self._fast_commits = 0
        self._checkpoint_every = _CHECKPOINT_FIRST
        self._checkpoint_due = False

    async def open(self, schema: Schema) -> list[str]:
        if not _MAY_CREATE.get() and not self.path.exists():
            raise StoreMissing(f"no {schema.name} store exists at {self.path}: nothing was "
                               "recorded there (is --data-dir, MIDWAY_DATA_DIR or the store "
                               "setting right?)")
        if not self.inline:
            self._jobs = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._serve, args=(self._jobs,),
                                            daemon=True, name=f"midway-{schema.name}-db")
            self._thread.start()
        return await self._on_store(lambda: self._connect(schema))

    def _connect(self, schema: Schema) -> list[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so that
        # several processes serialise on the file's write lock, never deadlock on upgrades.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=30, factory=_Connection)
        enable_wal(conn)
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        conn.level = self.synchronous.upper()
        conn.execute("PRAGMA busy_timeout=30000")
        # 256 KiB of page cache (SQLite's default is 2 MiB per connection): the stores write
        # far more than they read back, and the OS caches the file all the same (measured:
        # the audit writer's high-water mark after JSON c=64, median of five runs, 39 -> 37 MB).
        conn.execute("PRAGMA cache_size=-256")
        self._conn = conn
        from midway.storage.schema import sqlite_upgrade

        changes = self._in_tx(lambda tx: sqlite_upgrade(tx, schema, f"SQLite {self.path}"))
        if self._jobs is not None and self.synchronous == "normal":
            # Never waits for the lock (timeout 0: the store thread waits instead), never
            # checkpoints (an fsync: the store thread does it, see _checkpoint).
            fast = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=0, factory=_Connection)
            fast.execute("PRAGMA synchronous=NORMAL")
            fast.level = "NORMAL"
            fast.execute("PRAGMA wal_autocheckpoint=0")
            fast.execute("PRAGMA cache_size=-256")  # as the store thread's (above)
            self._fast = fast
        return changes

    async def close(self) -> None:
        if self._deferred is not None:  # what it would wake for runs below
            self._deferred.cancel()
            self._deferred = None
        held, self._held = self._held, None
        if held is not None:  # a held transaction commits, with what was queued for it
            held.cancel()
            self._release(asyncio.get_running_loop())
        # A drain still due on this loop hands over to the store thread, which runs first
        # what is queued (below); no drain is running here now (they run to their end).
        fast, self._fast = self._fast, None
        if fast is not None:
            fast.close()
        if self._conn is not None:
            # units queued whose wake-up has not reached the store thread yet run first
            await self._on_store(self._close_conn)
        if self._thread is not None and self._jobs is not None:
            self._jobs.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = self._jobs = None

    def _close_conn(self) -> None:
        self._run_queued()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _on_store(self, job: Callable[[], T]) -> T:
        """``job()`` on the store's thread (or here, inline)."""
        if self._jobs is None:
            return job()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((job, done))
        return await asyncio.wrap_future(done)

    def _serve(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        """The store thread: run what it is handed, in order, until told to stop."""
        while (job := jobs.get()) is not None:
            if job is _DRAIN:
                self._run_queued()
                continue
            if job is _CHECKPOINT:
                self._checkpoint()
                continue
            assert isinstance(job, tuple)
            fn, done = job
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to its caller
                done.set_exception(exc)

    async def run(self, unit: Callable[[Tx], Awaitable[T]], *, durable: bool = True,
                  defer: bool = False, brief: bool = False, hold: bool = False) -> T:
        if self._jobs is None:
            if self._conn is None:
                raise RuntimeError(f"database {self.path} is not open")
            return self._in_tx(unit, durable)
        return await self.submit(unit, durable=durable, defer=defer, brief=brief, hold=hold)

    def submit(self, unit: Callable[[Tx], Awaitable[T]], *, durable: bool = True,
               defer: bool = False, brief: bool = False, hold: bool = False
               ) -> asyncio.Future[T]:
        if self._conn is None:
            raise RuntimeError(f"database {self.path} is not open")
        caller = asyncio.get_running_loop()
        if self._jobs is None:
            done: asyncio.Future[T] = caller.create_future()
            try:
                done.set_result(self._in_tx(unit, durable))
            except Exception as exc:  # handed to whoever awaits the future
                done.set_exception(exc)
            return done
        # Group commit: units queued while the drain is held run together in one
        # transaction (each in a savepoint of its own), one hop and one commit for them all.
        future: asyncio.Future[T] = caller.create_future()
        due = caller.time() + DEFER_MAX if defer else 0.0  # when a deferred unit must run
        with self._lock:
            self._queue.append((unit, durable, future, caller, brief, due, hold and brief))
            start = not self._draining and not defer
            if start:
                self._draining = True
            wait = defer and not self._draining
        if start:
            # At the end of this loop iteration: the units its callbacks queue share one
            # transaction.
            caller.call_soon(self._drain, caller)
        elif wait:
            # Left for the next unit's drain to carry along, or this timer's. A timer armed
            # for an earlier deferred unit is left to run out rather than cancelled by the
            # drain that carried it (see _drain_deferred): about one timer per DEFER_MAX, not
            # one armed and cancelled per unit.
            timer = self._deferred
            if timer is None or timer.when() > due:
                if timer is not None:
                    timer.cancel()
                self._deferred = caller.call_at(due, self._drain_deferred, caller)
        return future

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``, holding the drain: run the brief units at the head of the queue here
        while the write lock is free at once; hand the rest (or a checkpoint that is due) to
        the store thread, with the drain. So does a queue of more than _INLINE_MAX units:
        under load a hop is shared by many units, and the store thread's SQLite work then
        overlaps the loop's on another core, where there is one. (The loop is passed in:
        ``asyncio.get_running_loop()`` is a getpid system call each time on Python 3.11.)"""
        job = _DRAIN
        while True:
            fast = self._fast
            with self._lock:
                if not self._queue and not self._checkpoint_due:
                    self._draining = False
                    return
                batch: list[_Queued] = []
                if fast is not None and len(self._queue) <= _INLINE_MAX:
                    while self._queue and self._queue[0][4]:
                        batch.append(self._queue.popleft())
            if fast is None or not batch:
                if self._checkpoint_due:
                    self._checkpoint_due = False
                    job = _CHECKPOINT
                break
            live = [item for item in batch if not item[2].cancelled()]
            if not live:
                continue
            hold = any(item[6] for item in live)
            outcomes, rest = self._in_tx_group(fast, live, yield_busy=True, keep_open=hold)
            if hold and fast.in_transaction:
                # Held open (see run()): the held units' callers learn their outcomes now, and
                # the brief units they queue on learning them (in the next iteration's
                # callbacks, after theirs) join it; the others learn theirs once it commits.
                _deliver([o for o in outcomes if o[0][6]], loop)
                self._held_back = [o for o in outcomes if not o[0][6]]
                self._held = loop.call_soon(self._release, loop)
                return
            _deliver(outcomes, loop)
            if outcomes:  # (a count of transactions, near enough for checkpoints)
                self._fast_commits += 1
                self._checkpoint_due = self._fast_commits >= self._checkpoint_every
            if rest:  # the write lock was taken: the store thread waits for it
                with self._lock:
                    self._queue.extendleft(reversed(rest))
                break
        jobs = self._jobs
        if jobs is not None:  # else closed meanwhile: close() ran what was queued
            jobs.put(job)

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``, holding the drain, a transaction held open on the fast connection
        (see run()'s ``hold``): run in it the brief units queued since, commit, and go on
        draining. Should a joined unit raise or the commit fail, the whole transaction is
        undone (the held units' effects too: their callers were told, so ``held_lost`` grows,
        as run() says), and the units not held run again in one of their own, each learning
        its own outcome (brief units may run twice)."""
        self._held = None
        held_back, self._held_back = self._held_back, []
        fast = self._fast
        assert fast is not None, "closed with a transaction held"
        assert fast.in_transaction, "no transaction held"
        with self._lock:
            joined: list[_Queued] = []
            while self._queue and self._queue[0][4] and len(joined) < _GROUP_MAX:
                joined.append(self._queue.popleft())
        live = [item for item in joined if not item[2].cancelled()]
        rest: list[_Queued] = []
        tx = _SQLiteTx(fast)
        try:
            outcomes = held_back + [(item, _drive(item[0](tx)), None) for item in live]
            fast.statements.execute("COMMIT")
        except BaseException as exc:
            if fast.in_transaction:
                fast.statements.execute("ROLLBACK")
            # before the units that run again: they look at it
            self.held_lost += 1
            self.held_error = exc
            again = [item for item, _, _ in held_back] + live
            outcomes, rest = self._in_tx_group(fast, again, yield_busy=True) if again \
                else ([], [])
        _deliver(outcomes, loop)
        self._fast_commits += 1
        self._checkpoint_due = self._fast_commits >= self._checkpoint_every
        if rest:  # the write lock was taken meanwhile: the store thread waits for it
            with self._lock:
                self._queue.extendleft(reversed(rest))
            self._kick()
            return
        self._drain(loop)  # what was queued behind them, a checkpoint due, or let go

    def _drain_deferred(self, loop: asyncio.AbstractEventLoop) -> None:
        """The deferred units' timer (on ``loop``): nothing to do if what it was armed for
        was carried along and nothing waits; armed again for the deferred units queued since,
        if none of them is due yet (each waits up to DEFER_MAX for a unit to carry it); else a
        drain."""
        self._deferred = None
        with self._lock:
            if not self._queue or self._draining:
                return
            # Only deferred units wait undrained (any other starts a drain).
            due = min(item[5] for item in self._queue)
            now = due <= loop.time()
            if now:
                self._draining = True
        if now:
            self._drain(loop)
        else:
            self._deferred = loop.call_at(due, self._drain_deferred, loop)

    def _kick(self) -> None:
        jobs = self._jobs
        if jobs is not None:  # else closed meanwhile: close() ran what was queued
            jobs.put(_DRAIN)

    def _checkpoint(self) -> None:
        """On the store thread, handed the drain by a loop once its connection (which never
        checkpoints: an fsync) has written about _CHECKPOINT_FRAMES pages since the last
        one: copy the WAL into the database (passive: another process's writer is not
        waited for) and size the next interval from how many pages this one wrote. As no
        unit of this process writes meanwhile, the next one starts the WAL over, as after
        SQLite's own automatic checkpoint; units queued meanwhile run here, after it."""
        commits, self._fast_commits = self._fast_commits, 0
        row = None
        conn = self._conn
        try:
            if conn is not None:
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the next one tries again; commits are not at risk
            log.debug("%s: checkpoint failed: %s", self.path, exc)
        finally:
            self._hand_back()
        frames = int(row[1]) if row is not None else -1
        if frames > 0 and commits > 0:
            per_commit = frames / commits
            self._checkpoint_every = max(
                _CHECKPOINT_MIN, min(_CHECKPOINT_MAX, int(_CHECKPOINT_FRAMES / per_commit)))

    def _hand_back(self) -> None:
        """On the store thread, after a checkpoint: the drain back to the loop that queued
        the next unit, if it is brief (it found nothing in its way), else run the queue
        here. (Running it here, the next unit could be queued before the drain is let go,
        and the next: brief units would stay off the loop for as long as that goes on.)"""
        with self._lock:
            if not self._queue:
                self._draining = False
                return
            head = self._queue[0]
        if head[4] and self._fast is not None:
            with contextlib.suppress(RuntimeError):  # that loop is closed: run it here
                head[3].call_soon_threadsafe(self._drain, head[3])
                return
        self._run_queued()

    def _run_queued(self) -> None:
        """On the store thread, holding the drain (or closing): run every queued unit, in
        order, in as few transactions as the queue allows; each caller learns its outcome
        once its unit's commit is done."""
        while True:
            with self._lock:
                if not self._queue:
                    self._draining = False
                    return
                batch = [self._queue.popleft()
                         for _ in range(min(len(self._queue), _GROUP_MAX))]
            conn = self._conn
            assert conn is not None, "database is not open"
            live = [item for item in batch if not item[2].cancelled()]
            if live:
                _deliver(self._in_tx_group(conn, live)[0], None)

    def _in_tx_group(self, conn: _Connection, batch: list[_Queued], *,
                     yield_busy: bool = False, keep_open: bool = False
                     ) -> tuple[list[tuple[_Queued, Any, BaseException | None]], list[_Queued]]:
        """Run ``batch`` in as few transactions as it allows: each caller's outcome, and
        (``yield_busy``: the write lock was not free at once) the units not run.
        ``keep_open``: a group of brief units that all succeed is left uncommitted (its
        transaction open on ``conn``: see _release)."""
        done: list[tuple[_Queued, Any, BaseException | None]] = []
        self._set_level(conn, any(item[1] for item in batch))
        if all(item[4] for item in batch):
            # Brief units may run again: tried first with no savepoint (SQLite copies
            # every page a savepoint's unit changes to a statement journal); one failing
            # undoes the group, which then runs again unit by unit, below (a unit alone
            # has its outcome: it would only fail again).
            try:
                conn.statements.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if yield_busy and _busy(exc):
                    return done, list(batch)
                return [(item, None, exc) for item in batch], []
            except BaseException as exc:  # handed to its caller
                return [(item, None, exc) for item in batch], []
            tx = _SQLiteTx(conn)
            try:
                results: list[tuple[_Queued, Any, BaseException | None]] = [
                    (item, _drive(item[0](tx)), None) for item in batch]
            except BaseException as exc:
                if conn.in_transaction:
                    conn.statements.execute("ROLLBACK")
                if len(batch) == 1:
                    return [(batch[0], None, exc)], []
            else:
                if keep_open:
                    return results, []
                try:
                    conn.statements.execute("COMMIT")
                except BaseException as exc:  # handed to its caller
                    if conn.in_transaction:
                        conn.statements.execute("ROLLBACK")
                    return [(item, None, exc) for item in batch], []
                return results, []
        pending = collections.deque(batch)
        while pending:
            try:
                conn.statements.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if yield_busy and _busy(exc):
                    return done, list(pending)
                done += [(item, None, exc) for item in pending]
                return done, []
            except BaseException as exc:  # handed to its caller
                done += [(item, None, exc) for item in pending]
                return done, []
            in_tx: list[tuple[_Queued, Any, BaseException | None]] = []
            while pending:
                item = pending.popleft()
                # The transaction's first unit needs no savepoint (nor SQLite's copy of
                # every page it changes): if it fails, the whole transaction is undone,
                # and the others get one of their own.
                first = not in_tx
                if not first:
                    conn.statements.execute("SAVEPOINT midway_unit")
                try:
                    result = _drive(item[0](_SQLiteTx(conn)))
                except BaseException as exc:  # handed to its caller
                    if first:
                        # SQLite may have rolled back already (a full disk, an I/O
                        # error): a second ROLLBACK would hide the cause.
                        if conn.in_transaction:
                            conn.statements.execute("ROLLBACK")
                        done.append((item, None, exc))
                        break
                    if conn.in_transaction:
                        conn.statements.execute("ROLLBACK TO midway_unit")
                        conn.statements.execute("RELEASE midway_unit")
                        in_tx.append((item, None, exc))
                        continue
                    # SQLite rolled the whole transaction back (a full disk, an I/O
                    # error): the units before this one are undone too.
                    done += [(i, None, exc) for i, _, _ in in_tx]
                    done.append((item, None, exc))
                    in_tx = []
                    break
                if not first:
                    conn.statements.execute("RELEASE midway_unit")
                in_tx.append((item, result, None))
            if not in_tx:
                continue
            try:
                conn.statements.execute("COMMIT")
            except BaseException as exc:  # handed to its caller
                if conn.in_transaction:
                    conn.statements.execute("ROLLBACK")
                done += [(i, None, exc) for i, _, _ in in_tx]
            else:
                done += in_tx
        return done, []

    def _in_tx(self, unit: Callable[[Tx], Awaitable[T]], durable: bool = True) -> T:
        conn = self._conn
        assert conn is not None, "database is not open"
        self._set_level(conn, durable)
        conn.statements.execute("BEGIN IMMEDIATE")
        try:
            result = _drive(unit(_SQLiteTx(conn)))
        except BaseException:
            # SQLite may have rolled back already (a full disk, an I/O error): a
            # second ROLLBACK would hide the cause behind "cannot rollback".
            if conn.in_transaction:
                conn.statements.execute("ROLLBACK")
            raise
        conn.statements.execute("COMMIT")
        return result

    def _set_level(self, conn: _Connection, durable: bool) -> None:
        """Before a transaction (the level cannot change inside one): ``conn`` at the store's
        synchronous level, or NORMAL for units that need not be durable. In WAL mode a NORMAL
        commit survives the process; the next FULL commit syncs it along. The level is left
        as it is after: switched only when the next transaction needs the other one (a
        PRAGMA each way per transaction otherwise)."""
        level = "NORMAL" if not durable else self.synchronous.upper()
        if conn.level != level:
            conn.statements.execute(f"PRAGMA synchronous={level}")
            conn.level = level


# A deferred unit waits at most this long (seconds) for another unit to carry it along.
DEFER_MAX = 0.02
# A loop runs at most this many queued units itself (see _drain).
_INLINE_MAX = 8
# At most this many units share one transaction (a bound on how long one commit holds the
# file's write lock against other processes).
_GROUP_MAX = 64
# The fast connection's checkpoints: about every _CHECKPOINT_FRAMES pages written (SQLite's
# own default), counted in commits, the first after _CHECKPOINT_FIRST.
_CHECKPOINT_FRAMES = 1000
_CHECKPOINT_FIRST = 100
_CHECKPOINT_MIN = 8
_CHECKPOINT_MAX = 1000
# (unit, durable, its future, its caller's loop, brief, when it must run if deferred, held)
_Queued = tuple[Callable[[Tx], Awaitable[Any]], bool, "asyncio.Future[Any]",
                asyncio.AbstractEventLoop, bool, float, bool]
# jobs for the store thread: drain the queue, checkpoint, or a call whose outcome goes to a
# future
_DRAIN = object()
_CHECKPOINT = object()
_Job = object | tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether a statement failed because another connection holds the lock it needs."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(exc)
    return "locked" in text or "busy" in text


def _drive(step: Awaitable[T]) -> T:
    """Run a unit's coroutine to its end on this thread, with no event loop: its awaits are
    its ``tx``'s statements, which return without suspending."""
    coro = step.__await__()
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    close = getattr(coro, "close", None)
    if close is not None:
        close()
    raise RuntimeError("a unit of work on an SQLite store awaited something other than its "
                       "transaction (a unit must only talk to its tx)")


def _deliver(outcomes: list[tuple[_Queued, Any, BaseException | None]],
             here: asyncio.AbstractEventLoop | None) -> None:
    """Hand each outcome to its caller's loop, one wake-up per loop (none for ``here``, the
    loop this runs on)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any,
                                                        BaseException | None]]] = {}
    for item, result, exc in outcomes:
        by_loop.setdefault(item[3], []).append((item[2], result, exc))
    for loop, results in by_loop.items():
        if loop is here:
            _settle(results)
            continue
        try:
            loop.call_soon_threadsafe(_settle, results)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting
            pass


def _settle(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, exc in results:
        if future.done():  # cancelled meanwhile
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


class _Connection(sqlite3.Connection):
    """A connection whose statements all go through one cursor of its own:
    ``Connection.execute`` makes a cursor for each (allocated, registered with the connection,
    freed), a few percent of a short statement's cost. Whoever holds the drain uses it, one
    statement at a time; each statement's rows are read before the next one runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.row_factory = sqlite3.Row  # a cursor takes its connection's when it is made
        self.statements = self.cursor()
        self.level = ""  # PRAGMA synchronous as last set (see SQLiteDatabase._set_level)


class _SQLiteTx:
    dialect: Dialect = "sqlite"

    __slots__ = ("_cursor",)

    def __init__(self, conn: _Connection) -> None:
        self._cursor = conn.statements

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(row) for row in self._cursor.execute(sql, args).fetchall()]

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        row = self._cursor.execute(sql, args).fetchone()
        return None if row is None else dict(row)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = self._cursor.execute(sql, args).fetchone()
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: Any) -> int:
        return self._cursor.execute(sql, args).rowcount

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        self._cursor.executemany(sql, args)


# -- PostgreSQL --------------------------------------------------------------------------------

_numbered_cache: dict[str, str] = {}


def numbered(sql: str) -> str:
    """``?`` placeholders as asyncpg's ``$1, $2, …`` (the shared SQL holds no literal ``?``)."""
    out = _numbered_cache.get(sql)
    if out is None:
        parts = sql.split("?")
        out = parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], 1))
        if len(_numbered_cache) < 4096:
            _numbered_cache[sql] = out
    return out


def _status_count(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PostgresDatabase(Database):
    """A PostgreSQL database through an asyncpg pool.

    :param schema: the PostgreSQL schema for the tables (created if missing); ``None`` uses the
        connection's ``search_path``.
    """

    dialect: Dialect = "postgresql"

    def __init__(self, store: StoreURL, *, schema: str | None = None, min_size: int = 1,
                 max_size: int = 10, label: str = "store",
                 command_timeout: float | None = None) -> None:
        from midway.storage.schema import check_identifier

        assert store.url is not None
        self.store = store
        self.dsn = store.url
        self.schema = check_identifier(schema, f"{label}: schema") if schema else None
        self.min_size = min_size
        self.max_size = max_size
        self.label = label
        self.command_timeout = command_timeout
        self._pool: Any = None

    @property
    def server_settings(self) -> dict[str, str] | None:
        return {"search_path": self.schema} if self.schema else None

    async def open(self, schema: Schema) -> list[str]:
        asyncpg = import_asyncpg(self.label)
        from midway.storage.retry import StoreUnavailable, reach
        from midway.storage.schema import pg_error

        where = f"{self.label}: PostgreSQL {self.store.masked}"
        try:
            self._pool = await reach(lambda: asyncpg.create_pool(
                self.dsn, min_size=self.min_size, max_size=self.max_size,
                server_settings=self.server_settings, command_timeout=self.command_timeout),
                where=where, log=log)
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError,
                asyncpg.InvalidCatalogNameError) as exc:
            raise StoreUnavailable(pg_error(where, exc)) from None
        if await self.fetchval("SHOW synchronous_commit") == "off":
            log.warning("%s: PostgreSQL %s has synchronous_commit = off: if the server "
                        "crashes, commits midway was told had landed (settlements, audit "
                        "records) are lost; set it to on (the default) for this database or "
                        "role", self.label, self.store.masked)
        from midway.storage.schema import pg_upgrade

        return await pg_upgrade(self, schema)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def run(self, unit: Callable[[Tx], Awaitable[T]], *, durable: bool = True,
                  defer: bool = False, brief: bool = False, hold: bool = False) -> T:
        if self._pool is None:
            raise RuntimeError(f"database {self.store.masked} is not open")
        async with self._pool.acquire() as conn, conn.transaction():
            if not durable:
                await conn.execute("SET LOCAL synchronous_commit = off")
            return await unit(_PostgresTx(conn))

    async def connect(self) -> Any:
        """A connection of its own (not pooled), with this store's settings."""
        asyncpg = import_asyncpg(self.label)
        return await asyncpg.connect(self.dsn, server_settings=self.server_settings,
                                     timeout=10)


class _PostgresTx:
    dialect: Dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self._conn.fetch(numbered(sql), *args)]

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        row = await self._conn.fetchrow(numbered(sql), *args)
        return None if row is None else dict(row)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._conn.fetchval(numbered(sql), *args)

    async def execute(self, sql: str, *args: Any) -> int:
        return _status_count(await self._conn.execute(numbered(sql), *args))

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(numbered(sql), list(args))


def import_asyncpg(label: str) -> Any:
    try:
        import asyncpg
    except ImportError:
        raise StoreURLError(f"{label}: a PostgreSQL store needs asyncpg: "
                            "pip install 'midway[postgres]'") from None
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _OneLine) for f in pool_log.filters):
        pool_log.addFilter(_OneLine())
    return asyncpg


class _OneLine(logging.Filter):
    """asyncpg's pool logs a traceback each time it fails to reconnect while PostgreSQL is
    down; the store's own lines already say when an outage starts and ends, so the pool's
    become one line naming the cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            from midway.storage.retry import describe

            record.msg = f"{record.getMessage()} ({describe(record.exc_info[1])})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def open_database(store: StoreURL, *, schema: str | None = None, label: str = "store",
                  synchronous: str = "normal", inline: bool = False, max_pool: int = 10,
                  command_timeout: float | None = None) -> Database:
    """The :class:`Database` for a parsed ``store`` setting (not opened yet).

    :param command_timeout: PostgreSQL: seconds after which a statement fails (a hung
        connection then fails the unit, which the caller may retry, instead of stalling it).
    """
    if store.kind == "sqlite":
        assert store.path is not None
        return SQLiteDatabase(store.path, synchronous=synchronous, inline=inline)
    if store.kind == "postgresql":
        return PostgresDatabase(store, schema=schema, max_size=max_pool, label=label,
                                command_timeout=command_timeout)
    raise StoreURLError(f"{label}: {store.kind} is not a SQL store")
