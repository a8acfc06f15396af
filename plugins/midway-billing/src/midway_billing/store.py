"""The billing store: the ledger, budget counters and reservations, on SQLite or PostgreSQL.

Three tables:

* ``billing_ledger`` — one row per upstream attempt (id: midway's attempt id), written ahead as
  ``pending`` before the attempt is sent and ``settled`` after; requests answered without an
  upstream (cache hits, refusals) get one row of their own kind.
* ``billing_counters`` — spent and reserved picodollars of one budget bucket (a scope value in
  one window), changed in the same transaction as the ledger rows they account for, so that a
  counter's spent always equals the ledger's sum for its bucket.
* ``billing_reservations`` — estimates held for requests in flight, so that a crashed
  instance's holds can be found and released.

Every method is one unit of work (:meth:`midway.storage.Database.run`): one transaction, one
hop to the store's thread on SQLite. Units that change several tables lock in one order —
reservation rows, then ledger rows (by id), then counters (by key) — so that settlement,
reservation and reconciliation never deadlock one another on PostgreSQL; reservations lock
their counters with ``SELECT … FOR UPDATE``, so admission is atomic across instances. (On
SQLite every unit holds the file's write lock, which serialises them all.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import orjson

from midway.storage import Database, Schema, Tx, liveness, retrying
from midway_billing.budgets import Bucket

log = logging.getLogger("midway.billing")

# Which Claude Code session and subagent a row came from, and the fingerprint of its prompt
# that the cache-break detector compares (midway_billing.sessions).
ORIGIN_COLUMNS = ("session_id", "agent_id", "parent_agent_id")
FINGERPRINT_COLUMNS = ("system_hash", "tools_hash", "thread_hash")

LEDGER_COLUMNS = (
    "id", "exchange_id", "attempt", "kind", "state", "instance", "created_at", "settled_at",
    "principal", "principal_name", "team", "project", "model", "priced_model", "upstream",
    "key_id", "path", "status", "error", "input_tokens", "output_tokens",
    "cache_write_5m_tokens", "cache_write_1h_tokens", "cache_read_tokens",
    "web_search_requests", "cost_pusd", "saved_pusd", "unpriced", "batch",
    # pricing (docs/billing.md "Prices"): what priced the row, and what it was priced from
    "catalogue_version", "pricing_rule", "floor_output_tokens", "speed", "inference_geo",
    "betas", "corrects", "groups",
    *ORIGIN_COLUMNS, *FINGERPRINT_COLUMNS,
)

# Columns a row may leave out, and what they then hold.
OPTIONAL_COLUMNS: dict[str, Any] = {"catalogue_version": None, "pricing_rule": None,
                                    "floor_output_tokens": 0, "speed": None,
                                    "inference_geo": None, "betas": None, "corrects": None,
                                    "groups": None,
                                    **dict.fromkeys(ORIGIN_COLUMNS),
                                    **dict.fromkeys(FINGERPRINT_COLUMNS)}


# Counts and flags whose default is 0 (see SCHEMA).
ZERO_DEFAULT_COLUMNS = frozenset((
    "input_tokens", "output_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens",
    "cache_read_tokens", "web_search_requests", "cost_pusd", "saved_pusd", "unpriced", "batch",
    "floor_output_tokens"))
_REQUIRED = object()
# Per column: its name, what a row leaving it out holds (_REQUIRED: none may), and the value
# its default gives it (None, or 0).
_COLUMN_DEFAULTS = tuple((c, OPTIONAL_COLUMNS.get(c, _REQUIRED),
                          0 if c in ZERO_DEFAULT_COLUMNS else None) for c in LEDGER_COLUMNS)


def row_values(row: dict[str, Any]) -> tuple[tuple[str, ...], list[Any]]:
    """A ledger row's columns that differ from their default, in LEDGER_COLUMNS order, and
    their values.

    A column at its default (NULL; 0 for counts and flags) is not written: its default gives
    it the same value, and a settlement's upsert sets it from ``excluded`` all the same.
    Binding ``None`` costs Python's sqlite3 an adapter lookup that raises and formats an
    AttributeError — thousands of instructions each, and a row has about twenty; each value
    bound, and each column named, costs a little too (a pending row has eleven zeros)."""
    columns, values = [], []
    for c, missing, default in _COLUMN_DEFAULTS:
        value = row.get(c, missing)
        if value is None or (default is not None and value == 0):
            continue
        if value is _REQUIRED:
            raise KeyError(c)
        columns.append(c)
        values.append(value)
    return tuple(columns), values


# Counters and reservations are written by key on every request: WITHOUT ROWID tables (where
# created; see midway.storage.Schema) change one page a write, not the table's and its key's.
SCHEMA = Schema("billing", """
CREATE TABLE IF NOT EXISTS billing_ledger (
    id TEXT PRIMARY KEY,
    exchange_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    instance {int} NOT NULL,
    created_at {real} NOT NULL,
    settled_at {real},
    principal TEXT NOT NULL,
    principal_name TEXT,
    team TEXT,
    project TEXT,
    model TEXT,
    priced_model TEXT,
    upstream TEXT,
    key_id TEXT,
    path TEXT,
    status INTEGER,
    error TEXT,
    input_tokens {int} NOT NULL DEFAULT 0,
    output_tokens {int} NOT NULL DEFAULT 0,
    cache_write_5m_tokens {int} NOT NULL DEFAULT 0,
    cache_write_1h_tokens {int} NOT NULL DEFAULT 0,
    cache_read_tokens {int} NOT NULL DEFAULT 0,
    web_search_requests {int} NOT NULL DEFAULT 0,
    cost_pusd {int} NOT NULL DEFAULT 0,
    saved_pusd {int} NOT NULL DEFAULT 0,
    unpriced INTEGER NOT NULL DEFAULT 0,
    batch INTEGER NOT NULL DEFAULT 0,
    catalogue_version TEXT,
    pricing_rule TEXT,
    floor_output_tokens {int} NOT NULL DEFAULT 0,
    speed TEXT,
    inference_geo TEXT,
    betas TEXT,
    corrects TEXT,
    session_id TEXT,
    agent_id TEXT,
    parent_agent_id TEXT,
    system_hash TEXT,
    tools_hash TEXT,
    thread_hash TEXT,
    groups TEXT
);
CREATE INDEX IF NOT EXISTS billing_ledger_created ON billing_ledger (created_at);
CREATE INDEX IF NOT EXISTS billing_ledger_principal ON billing_ledger (principal, created_at);
CREATE INDEX IF NOT EXISTS billing_ledger_by_team ON billing_ledger (team, created_at)
    WHERE team IS NOT NULL;
CREATE INDEX IF NOT EXISTS billing_ledger_by_project ON billing_ledger (project, created_at)
    WHERE project IS NOT NULL;
CREATE INDEX IF NOT EXISTS billing_ledger_by_session ON billing_ledger (session_id, created_at)
    WHERE session_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS billing_ledger_correcting ON billing_ledger (corrects)
    WHERE corrects IS NOT NULL;
CREATE INDEX IF NOT EXISTS billing_ledger_open ON billing_ledger (instance, id)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS billing_ledger_reconciled ON billing_ledger (exchange_id)
    WHERE state = 'reconciled';
DROP INDEX IF EXISTS billing_ledger_team;
DROP INDEX IF EXISTS billing_ledger_project;
DROP INDEX IF EXISTS billing_ledger_session;
DROP INDEX IF EXISTS billing_ledger_corrects;
DROP INDEX IF EXISTS billing_ledger_pending;
DROP INDEX IF EXISTS billing_ledger_exchange;
CREATE TABLE IF NOT EXISTS billing_counters (
    key TEXT PRIMARY KEY,
    spent_pusd {int} NOT NULL DEFAULT 0,
    reserved_pusd {int} NOT NULL DEFAULT 0
){without_rowid};
CREATE TABLE IF NOT EXISTS billing_reservations (
    exchange_id TEXT PRIMARY KEY,
    instance {int} NOT NULL,
    amount_pusd {int} NOT NULL,
    buckets TEXT NOT NULL,
    created_at {real} NOT NULL
){without_rowid};
DROP INDEX IF EXISTS billing_reservations_instance;
CREATE TABLE IF NOT EXISTS billing_batches (
    batch_id TEXT PRIMARY KEY,
    exchange_id TEXT NOT NULL,
    created_at {real} NOT NULL,
    principal TEXT NOT NULL,
    owners TEXT NOT NULL,
    attribution TEXT NOT NULL,
    estimates TEXT NOT NULL,
    buckets TEXT NOT NULL,
    held_pusd {int} NOT NULL DEFAULT 0,
    charged_pusd {int} NOT NULL DEFAULT 0,
    results INTEGER NOT NULL DEFAULT 0,
    ended INTEGER NOT NULL DEFAULT 0,
    released_at {real},
    released_by TEXT
);
CREATE TABLE IF NOT EXISTS billing_spend_limits (
    id TEXT PRIMARY KEY,
    scope_type TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    period TEXT NOT NULL,
    amount_cents {int},
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    created_by TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS billing_spend_limits_scope
    ON billing_spend_limits (scope_type, scope_id, period);
CREATE TABLE IF NOT EXISTS billing_spend_audit (
    id TEXT PRIMARY KEY,
    created_at {real} NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_id TEXT NOT NULL,
    before_json TEXT,
    after_json TEXT
);
CREATE TABLE IF NOT EXISTS billing_principals (
    principal TEXT PRIMARY KEY,
    name TEXT,
    groups TEXT NOT NULL,
    seen_at {real} NOT NULL,
    kind TEXT,
    subject TEXT
);
""")

# What a row bills to is fixed when it is first written (ahead of its attempt): settling it
# never changes those columns, so the upsert leaves them out of its SET, and SQLite then leaves
# the indexes on them (principal, team, project, exchange, session, corrects) untouched: a
# settlement writes about half the pages it would otherwise.
FIXED_COLUMNS = ("id", "exchange_id", "attempt", "created_at", "principal", "principal_name",
                 "team", "project", "groups", "corrects", *ORIGIN_COLUMNS)

# A settlement sets every other column: one its row leaves out (NULL) is set to the default
# the insert would have given it, NULL.
UPSERT = "ON CONFLICT (id) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in LEDGER_COLUMNS if c not in FIXED_COLUMNS)
# A write-ahead, a batch result or a correction never replaces a row already there.
KEEP = "ON CONFLICT (id) DO NOTHING"
_ROW_SQL: dict[tuple[tuple[str, ...], str], str] = {}


def row_sql(columns: tuple[str, ...], conflict: str) -> str:
    """The statement writing a row's ``columns`` (of :func:`row_values`), then ``conflict``
    (:data:`UPSERT` or :data:`KEEP`). Only LEDGER_COLUMNS names are formatted in."""
    sql = _ROW_SQL.get((columns, conflict))
    if sql is None:
        sql = (f"INSERT INTO billing_ledger ({', '.join(columns)}) "  # noqa: S608
               f"VALUES ({', '.join('?' for _ in columns)}) {conflict}")
        if len(_ROW_SQL) < 1024:  # a few shapes of row in practice
            _ROW_SQL[(columns, conflict)] = sql
    return sql


async def write_row(tx: Tx, row: dict[str, Any], conflict: str) -> int:
    """Insert ``row`` (``conflict``: what to do if its id is there); rows changed."""
    columns, values = row_values(row)
    return await tx.execute(row_sql(columns, conflict), *values)

# Rows that cost money: upstream attempts, and the results of a batch (priced when fetched).
CHARGED_KINDS = "('attempt', 'batch_result')"

# Counters start from what the ledger already holds for their window (a budget added later
# still sees earlier spend). Only the scope column names below are ever formatted into SQL.
SCOPE_COLUMNS = {"principal": "principal", "team": "team", "project": "project"}
GROUP_SEP = "\x1f"


def groups_column(groups: tuple[str, ...]) -> str | None:
    """A row's ``groups``: each group between separators (NULL: none), so a group budget
    added later finds its members' earlier spend with one LIKE."""
    kept = [g for g in groups if GROUP_SEP not in g]
    return GROUP_SEP + GROUP_SEP.join(kept) + GROUP_SEP if kept else None


def counter_init_sql(bucket: Bucket) -> tuple[str, list[Any]]:
    where = f"kind IN {CHARGED_KINDS} AND created_at >= ?"
    args: list[Any] = [bucket.start]
    column = SCOPE_COLUMNS.get(bucket.scope)
    if bucket.scope == "group":  # rows keep the principal's groups as \x1fa\x1fb\x1f
        where += " AND groups LIKE ? ESCAPE '!'"
        escaped = bucket.value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
        args.append(f"%{GROUP_SEP}{escaped}{GROUP_SEP}%")
    elif column is not None:
        where += f" AND {column} = ?"
        args.append(bucket.value)
    sql = f"SELECT COALESCE(SUM(cost_pusd), 0) FROM billing_ledger WHERE {where}"  # noqa: S608
    return sql, args


GROUPS = {"principal": "principal", "team": "team", "project": "project", "model": "model",
          "session": "session_id"}

REPORT_SUMS = """
    COUNT(DISTINCT exchange_id) AS requests,
    SUM(CASE WHEN kind = 'attempt' THEN 1 ELSE 0 END) AS attempts,
    SUM(CASE WHEN kind IN {charged} THEN input_tokens ELSE 0 END) AS input_tokens,
    SUM(CASE WHEN kind IN {charged} THEN output_tokens ELSE 0 END) AS output_tokens,
    SUM(CASE WHEN kind IN {charged} THEN cache_write_5m_tokens ELSE 0 END)
        AS cache_write_5m_tokens,
    SUM(CASE WHEN kind IN {charged} THEN cache_write_1h_tokens ELSE 0 END)
        AS cache_write_1h_tokens,
    SUM(CASE WHEN kind IN {charged} THEN cache_read_tokens ELSE 0 END) AS cache_read_tokens,
    SUM(CASE WHEN kind IN {charged} THEN web_search_requests ELSE 0 END) AS web_search_requests,
    SUM(cost_pusd) AS cost_pusd,
    SUM(saved_pusd) AS saved_pusd,
    SUM(CASE WHEN kind = 'cache_hit' THEN 1 ELSE 0 END) AS cache_hits,
    SUM(CASE WHEN kind = 'refused' THEN 1 ELSE 0 END) AS refused,
    SUM(unpriced) AS unpriced,
    SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending,
    SUM(CASE WHEN state = 'reconciled' THEN 1 ELSE 0 END) AS reconciled
""".replace("{charged}", CHARGED_KINDS)
REPORT_INT_FIELDS = ("requests", "attempts", "input_tokens", "output_tokens",
                     "cache_write_5m_tokens", "cache_write_1h_tokens", "cache_read_tokens",
                     "web_search_requests", "cache_hits", "refused", "unpriced", "pending",
                     "reconciled")


def time_filter(since: float | None, until: float | None) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if since is not None:
        clauses.append("created_at >= ?")
        args.append(since)
    if until is not None:
        clauses.append("created_at < ?")
        args.append(until)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


@attrs.define
class Reservation:
    """An estimate held on some buckets while a request is in flight."""

    exchange_id: str
    amount_pusd: int
    buckets: list[str]  # bucket keys
    created_at: float
    # the store's held_lost when the hold was admitted (see Store.reserve); None: not known
    # to be held (the write-ahead has nothing to check)
    lost: int | None = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class ReserveResult:
    admitted: bool
    # bucket key → (spent, reserved) picodollars, after the reservation if admitted
    states: dict[str, tuple[int, int]]
    refused_key: str | None = None



@attrs.frozen
class Batch:
    """A Message Batch submitted through midway: who it bills to, what each request was
    estimated at (by custom_id), and the hold still on its budget buckets."""

    batch_id: str
    exchange_id: str
    created_at: float
    principal: str
    owners: tuple[str, ...]  # principals that may read it: the submitter and its ancestors
    attribution: dict[str, Any]  # the ledger's attribution columns, copied to result rows
    estimates: dict[str, int]
    held_pusd: int = 0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Batch:
        return cls(row["batch_id"], row["exchange_id"], float(row["created_at"]),
                   row["principal"], tuple(row["owners"].split("\n")),
                   orjson.loads(row["attribution"]), orjson.loads(row["estimates"]),
                   int(row["held_pusd"]))


RECONCILED_ERROR = "midway stopped before this attempt settled"
# Where the dialects' SQL truly differs: row locks (SQLite's write lock covers the whole file),
# the day of a timestamp, and rounding down to a bucket.
_LOCK = {"sqlite": "", "postgresql": " FOR UPDATE"}
_DAY = {"sqlite": "strftime('%Y-%m-%d', created_at, 'unixepoch')",
        "postgresql": "to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"}
_FLOOR = {"sqlite": "CAST(created_at / {n} AS INTEGER) * {n}",
          "postgresql": "floor(created_at / {n}) * {n}"}
# At most this many counter keys are remembered as existing (then forgotten, and learnt again).
_COUNTED_MAX = 100_000
# Deadlocks and serialization failures (and a database that blinks) are tried again.
_RETRY_DEADLINE = 10.0
# An administrator's change is tried again for less: they are waiting for the answer.
_ADMIN_DEADLINE = 2.0


class Store:
    """A ledger and budget store shared by every instance using ``db``.

    :param instance: this instance's number (:func:`midway.storage.new_instance`), written on
        the rows it leaves pending and claimed while it runs, so that peers reconcile only the
        work of instances that died.
    """

    def __init__(self, db: Database, instance: int) -> None:
        self.db = db
        self.instance = instance
        # SQLite: flock files in billing-instances/ beside the database
        self.liveness = liveness(db, "billing")
        lock = _LOCK[db.dialect]  # only this fixed text is formatted into the statements
        self._counter_sql = (
            "SELECT spent_pusd, reserved_pusd FROM billing_counters "  # noqa: S608
            f"WHERE key = ?{lock}")
        self._holds_sql = (
            "SELECT exchange_id, amount_pusd, buckets FROM billing_reservations "  # noqa: S608
            f"WHERE instance = ? ORDER BY exchange_id{lock}")
        # A counter held, and (limited) only within its limit: its row after, or none.
        self._hold_sql = ("UPDATE billing_counters SET reserved_pusd = reserved_pusd + ? "
                          "WHERE key = ? RETURNING spent_pusd, reserved_pusd")
        self._hold_limited_sql = self._hold_sql.replace(
            " RETURNING", " AND reserved_pusd <= ? - spent_pusd RETURNING")
        self._pending_sql = (
            "SELECT id, exchange_id, attempt FROM billing_ledger "  # noqa: S608
            f"WHERE state = 'pending' AND instance = ? ORDER BY id{lock}")
        # Counter rows known to exist: a unit that only updates them is brief (see
        # Database.run); one that may create a counter sums its window of the ledger first.
        self._counted: set[str] = set()

    async def open(self) -> None:
        await self.db.open(SCHEMA)
        try:
            await self.liveness.claim(self.instance)
        except BaseException:
            await self.db.close()
            raise

    async def close(self) -> None:
        await self.liveness.release()
        await self.db.close()

    async def _run(self, unit: Callable[[Tx], Awaitable[Any]], what: str,
                   deadline: float = _RETRY_DEADLINE) -> Any:
        return await retrying(lambda: self.db.run(unit), what=what, log=log,
                              deadline=deadline)

    # -- the hot path: one unit each ---------------------------------------------------------

    def write_ahead(self, row: dict[str, Any], reservation: Reservation | None = None
                    ) -> Awaitable[int]:
        """Insert a pending attempt row (committed before the attempt is sent): await it.
        Never over a row already there: a write-ahead whose reply was lost (the database
        crashed, the hook was cancelled) may commit after its settlement, which it must not
        undo. (The unit's future itself, not a coroutine around it: one less a request.)
        With the request's admitted ``reservation``: should its held commit have failed (see
        reserve), this fails too, with that commit's error, and nothing is written."""
        columns, values = row_values(row)
        sql = row_sql(columns, KEEP)
        db = self.db
        if reservation is None or reservation.lost is None:
            return db.submit(lambda tx: tx.execute(sql, *values), brief=True)
        lost, exchange_id = reservation.lost, reservation.exchange_id

        def unit(tx: Tx) -> Awaitable[int]:
            if db.held_lost == lost:  # in the hold's transaction, or after it landed
                return tx.execute(sql, *values)
            return self._write_ahead_held(tx, sql, values, exchange_id)

        return db.submit(unit, brief=True)

    async def _write_ahead_held(self, tx: Tx, sql: str, values: list[Any],
                                exchange_id: str) -> int:
        """The write-ahead after a held transaction was undone (its own hold's, or a later
        one's): only if the hold is there."""
        if await tx.fetchval("SELECT 1 FROM billing_reservations WHERE exchange_id = ?",
                             exchange_id) is None:
            error = self.db.held_error
            assert error is not None, "a held transaction undone without its error"
            raise error
        return await tx.execute(sql, *values)

    async def reserve(self, reservation: Reservation, limits: dict[str, int | None]
                      ) -> ReserveResult:
        """Hold ``reservation.amount_pusd`` on every bucket, unless a limited bucket's spent +
        reserved + amount would exceed its limit (then nothing is held)."""
        amount = reservation.amount_pusd
        keys = sorted(limits)  # every unit locks counters in this order: no deadlock

        async def unit(tx: Tx) -> ReserveResult:
            states: dict[str, tuple[int, int]] = {}
            # Each counter held by one statement that also checks its limit (and locks the
            # row); one that is new or full undoes those before it, and is looked at below.
            for key in keys:
                room = _room(limits[key], amount)
                if room is _NO_ROOM_IN_SQL:
                    row = None
                elif room is None:
                    row = await tx.fetchone(self._hold_sql, amount, key)
                else:
                    row = await tx.fetchone(self._hold_limited_sql, amount, key, room)
                if row is None:
                    if states:
                        await tx.execute(_reserved_sql("-", len(states)), amount, *states)
                    break
                states[key] = int(row["spent_pusd"]), int(row["reserved_pusd"])
            else:
                await self._keep(tx, reservation)
                return ReserveResult(True, states)
            states = {}
            for key in keys:
                states[key] = await self._counter(tx, key)
            for key in keys:
                limit = limits[key]
                spent, reserved = states[key]
                if limit is not None and spent + reserved + amount > limit:
                    return ReserveResult(False, states, key)
            # one statement: the rows are locked already
            await tx.execute(_reserved_sql("+", len(keys)), amount, *keys)
            await self._keep(tx, reservation)
            return ReserveResult(True, {k: (s, r + amount) for k, (s, r) in states.items()})

        # Held: the write-ahead it admits (queued as soon as it is known) shares its commit.
        # The outcome is known before that commit: should it fail, db.held_lost grows past
        # what is noted here, and the write-ahead (run again without it, or later) finds the
        # hold missing and fails with the commit's error, as one whose own commit failed: the
        # request does not go on as if its hold had landed. (The other units in it run again,
        # a previous request's settlement among them.)
        result: ReserveResult = await self.db.submit(
            unit, brief=self._counted.issuperset(keys), hold=True)
        if result.admitted:
            reservation.lost = self.db.held_lost
        if len(self._counted) > _COUNTED_MAX:
            self._counted.clear()
        self._counted.update(keys)
        return result

    async def _keep(self, tx: Tx, reservation: Reservation) -> None:
        """Record a hold (for crash recovery). A new row no other unit can be waiting for:
        inserted after the counters."""
        await tx.execute("INSERT INTO billing_reservations (exchange_id, instance, "
                         "amount_pusd, buckets, created_at) VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT (exchange_id) DO NOTHING", reservation.exchange_id,
                         self.instance, reservation.amount_pusd,
                         "\n".join(reservation.buckets), reservation.created_at)

    async def extend(self, reservation: Reservation, need: int, want: int,
                     limits: dict[str, int | None]) -> int:
        """Grow a held reservation by up to ``want`` (at least ``need``) within every limited
        bucket's room; what was added to it (0: no room for ``need``, or no longer held)."""
        keys = sorted(limits)

        async def unit(tx: Tx) -> int:
            held = await tx.fetchval("SELECT amount_pusd FROM billing_reservations "  # noqa: S608
                                     f"WHERE exchange_id = ?{_LOCK[self.db.dialect]}",
                                     reservation.exchange_id)
            if held is None:  # released by reconciliation: nothing to grow
                return 0
            room = want
            for key in keys:
                limit = limits[key]
                spent, reserved = await self._counter(tx, key)
                if limit is not None:
                    room = min(room, limit - spent - reserved)
            if room < need:
                return 0
            await tx.execute(_reserved_sql("+", len(keys)), room, *keys)
            await tx.execute("UPDATE billing_reservations SET amount_pusd = amount_pusd + ? "
                             "WHERE exchange_id = ?", room, reservation.exchange_id)
            return room

        grown: int = await self.db.run(unit, brief=self._counted.issuperset(keys))
        reservation.amount_pusd += grown
        return grown

    async def _counter(self, tx: Tx, key: str) -> tuple[int, int]:
        """A bucket's counter, locked; created from the ledger if it is new (a budget added
        later still sees earlier spend)."""
        row = await tx.fetchone(self._counter_sql, key)
        if row is None:
            init, args = counter_init_sql(Bucket.from_key(key))
            insert = f"INSERT INTO billing_counters VALUES (?, ({init}), 0) ON CONFLICT (key) DO NOTHING"  # noqa: E501, S608
            await tx.execute(insert, key, *args)
            row = await tx.fetchone(self._counter_sql, key)
            assert row is not None
        return int(row["spent_pusd"]), int(row["reserved_pusd"])

    def settle(self, rows: list[dict[str, Any]], reservation: Reservation | None,
               charged_pusd: int) -> asyncio.Future[None]:
        """Write final rows; release the reservation and charge ``charged_pusd`` instead.

        If reconciliation released the reservation first (it took this instance for dead, or
        ran late), the counters are corrected by what it charged: spent moves by
        ``charged_pusd`` minus the estimate it put on the ledger, which these rows replace."""
        ordered = sorted(rows, key=_by_id)

        async def unit(tx: Tx) -> None:
            released, charged = 0, charged_pusd
            if reservation is not None:
                if await tx.execute("DELETE FROM billing_reservations WHERE exchange_id = ?",
                                    reservation.exchange_id):
                    released = reservation.amount_pusd
                elif await self._landed(tx, ordered[-1]["id"] if ordered else None):
                    # An earlier try committed but its reply was lost (the database went
                    # away at that moment): charging again would count the cost twice.
                    return
                else:  # reconciliation released it, charging the estimate on the ledger
                    charged -= int(await tx.fetchval(
                        "SELECT COALESCE(SUM(cost_pusd), 0) FROM billing_ledger "
                        "WHERE exchange_id = ? AND state = 'reconciled'",
                        reservation.exchange_id))
            for row in ordered:
                await write_row(tx, row, UPSERT)
            if reservation is not None:
                await _move(tx, reservation.buckets, released, charged)

        # Nobody waits for it (the answer is sent): it rides with the next request's unit.
        return self.db.submit(unit, defer=True, brief=True)

    async def _landed(self, tx: Tx, row_id: Any) -> bool:
        """Whether ``row_id`` is settled already (locked: the ledger comes after the
        reservations in every unit's lock order)."""
        if row_id is None:
            return False
        state = await tx.fetchval("SELECT state FROM billing_ledger WHERE id = ?"  # noqa: S608
                                  f"{_LOCK[self.db.dialect]}", row_id)
        return bool(state == "settled")

    # -- crash recovery ----------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Settle rows and release holds of instances that died; how many rows were fixed."""
        found = await self.db.fetch(
            "SELECT DISTINCT instance FROM billing_ledger WHERE state = 'pending' "
            "UNION SELECT DISTINCT instance FROM billing_reservations")
        fixed = 0
        for instance in sorted(int(r["instance"]) for r in found):
            if instance == self.instance:
                continue
            # Held while we act, so that neither a peer nor a restart of it interferes.
            async with self.liveness.dead(instance) as gone:
                if gone:
                    fixed += await self.reconcile_instance(instance)
        return fixed

    async def reconcile_instance(self, instance: int) -> int:
        """Release ``instance``'s holds and close its pending rows, whether it lives or not
        (:meth:`reconcile` asks first): an exchange that had reached the upstream is charged
        its estimate (the most it could have cost) on its last pending attempt row. A late
        :meth:`settle` of that exchange corrects the charge. How many rows were closed."""
        async def unit(tx: Tx) -> int:
            holds = await tx.fetch(self._holds_sql, instance)
            pending = await tx.fetch(self._pending_sql, instance)
            last = {r["exchange_id"]: r["id"] for r in sorted(pending, key=_attempt)}
            released: dict[str, int] = {}
            charged: dict[str, int] = {}
            for hold in holds:
                amount = int(hold["amount_pusd"])
                sent = hold["exchange_id"] in last
                if sent:
                    await tx.execute("UPDATE billing_ledger SET cost_pusd = ? WHERE id = ?",
                                     amount, last[hold["exchange_id"]])
                for key in filter(None, hold["buckets"].split("\n")):
                    released[key] = released.get(key, 0) + amount
                    charged[key] = charged.get(key, 0) + (amount if sent else 0)
            # Only the rows locked above: a hold or a pending row that appeared since (the
            # instance is alive after all) is not accounted for here, and taking its lock now,
            # after the counters', would deadlock with its settlement.
            now = time.time()
            await tx.executemany(
                "UPDATE billing_ledger SET state = 'reconciled', settled_at = ?, "
                "error = COALESCE(error, ?) WHERE id = ?",
                [(now, RECONCILED_ERROR, r["id"]) for r in pending])
            for key in sorted(released):
                await _move(tx, [key], released[key], charged[key])
            await tx.executemany("DELETE FROM billing_reservations WHERE exchange_id = ?",
                                 [(h["exchange_id"],) for h in holds])
            return len(pending)

        fixed: int = await self._run(unit, f"billing: reconciling instance {instance}")
        return fixed

    # -- reading -----------------------------------------------------------------------------

    async def counters(self, keys: list[str]) -> dict[str, tuple[int, int]]:
        """Spent and reserved of these buckets (from the ledger where not yet counted)."""
        async def unit(tx: Tx) -> dict[str, tuple[int, int]]:
            out = {}
            for key in keys:
                row = await tx.fetchone("SELECT spent_pusd, reserved_pusd FROM "
                                        "billing_counters WHERE key = ?", key)
                if row is None:
                    sql, args = counter_init_sql(Bucket.from_key(key))
                    out[key] = (int(await tx.fetchval(sql, *args)), 0)
                else:
                    out[key] = (int(row["spent_pusd"]), int(row["reserved_pusd"]))
            return out

        result: dict[str, tuple[int, int]] = await self.db.run(unit)
        return result

    async def all_counters(self) -> dict[str, tuple[int, int]]:
        rows = await self.db.fetch("SELECT key, spent_pusd, reserved_pusd FROM billing_counters")
        return {r["key"]: (int(r["spent_pusd"]), int(r["reserved_pusd"])) for r in rows}

    async def report(self, by: str, since: float | None, until: float | None
                     ) -> list[dict[str, Any]]:
        group = _DAY[self.db.dialect] if by == "day" else GROUPS[by]
        where, args = time_filter(since, until)
        # Only fixed column names and expressions are formatted in; values are parameters.
        sql = (f"SELECT {group} AS key, {REPORT_SUMS} FROM billing_ledger{where} "  # noqa: S608
               "GROUP BY 1 ORDER BY SUM(cost_pusd) DESC, 1")
        return await self.db.fetch(sql, *args)

    async def spend_series(self, bucket: int, by: str, since: float | None
                           ) -> list[tuple[float, str | None, int]]:
        t = _FLOOR[self.db.dialect].format(n=int(bucket))
        where, args = time_filter(since, None)
        sql = (f"SELECT {t} AS t, {GROUPS[by]} AS key, SUM(cost_pusd) AS cost "  # noqa: S608
               f"FROM billing_ledger{where} GROUP BY 1, 2 ORDER BY 1, 2")
        rows = await self.db.fetch(sql, *args)
        return [(float(r["t"]), r["key"], int(r["cost"])) for r in rows]

    async def repriceable(self, since: float | None, until: float | None
                          ) -> tuple[list[dict[str, Any]], dict[str, tuple[int, int]]]:
        """Settled rows that cost money (attempts, batch results) of a period, and per row id
        the corrections already made to it (their cost sum and count)."""
        where, args = time_filter(since, until)
        where = (where + " AND" if where else " WHERE") + f" kind IN {CHARGED_KINDS} AND " \
            "state = 'settled' AND corrects IS NULL"
        sql = f"SELECT * FROM billing_ledger{where} ORDER BY created_at, id"  # noqa: S608
        where2, args2 = time_filter(since, until)
        where2 = (where2 + " AND" if where2 else " WHERE") + " kind = 'reprice'"
        corrections = (
            "SELECT corrects, SUM(cost_pusd) AS cost, COUNT(*) AS n "  # noqa: S608
            f"FROM billing_ledger{where2} GROUP BY corrects")

        async def unit(tx: Tx) -> tuple[list[dict[str, Any]], dict[str, tuple[int, int]]]:
            rows = await tx.fetch(sql, *args)
            done = {r["corrects"]: (int(r["cost"]), int(r["n"]))
                    for r in await tx.fetch(corrections, *args2)}
            return [dict(r) for r in rows], done

        result: tuple[list[dict[str, Any]], dict[str, tuple[int, int]]] = \
            await self.db.run(unit)
        return result

    async def add_corrections(self, rows: list[dict[str, Any]]) -> None:
        """Insert correction rows (kind ``reprice``); the rows they correct stay as they were.
        A row id already there is left alone: running the same correction twice adds
        nothing."""
        async def unit(tx: Tx) -> None:
            for row in rows:
                await write_row(tx, row, KEEP)

        await self._run(unit, "billing: recording corrections")

    async def agent_totals(self, since: float | None, until: float | None,
                           top: int | None = None) -> list[dict[str, Any]]:
        """Cost and requests per (session, agent, parent agent), for the subagent tree; with
        ``top``, of the ``top`` costliest sessions only (clients name sessions at will)."""
        where, args = time_filter(since, until)
        if top is not None:
            sessions = await self.db.fetch(
                f"SELECT session_id FROM billing_ledger{where} "  # noqa: S608
                "GROUP BY session_id ORDER BY SUM(cost_pusd) DESC, session_id LIMIT ?",
                *args, int(top))
            named = [r["session_id"] for r in sessions if r["session_id"] is not None]
            clauses = []
            if named:
                clauses.append(f"session_id IN ({', '.join('?' for _ in named)})")
            if len(named) < len(sessions):
                clauses.append("session_id IS NULL")
            if not clauses:
                return []
            where += (" AND " if where else " WHERE ") + f"({' OR '.join(clauses)})"
            args += named
        sql = ("SELECT session_id, agent_id, parent_agent_id, "  # noqa: S608
               "COUNT(DISTINCT exchange_id) AS requests, SUM(cost_pusd) AS cost_pusd "
               f"FROM billing_ledger{where} GROUP BY session_id, agent_id, parent_agent_id")
        return await self.db.fetch(sql, *args)

    async def session_list(self, since: float | None, until: float | None, limit: int,
                           principal: str | None = None, team: str | None = None
                           ) -> list[dict[str, Any]]:
        """The ``limit`` latest Claude Code sessions begun in a period (of ``principal`` /
        ``team``'s requests only, when given): per session its totals, as
        :func:`midway_billing.sessions.summary` computes them from the turns."""
        where, args = _session_filter(since, until, principal, team)
        sql = (  # only fixed text is formatted in; values are parameters
            "SELECT session_id, MIN(principal) AS principal, "  # noqa: S608
            "COUNT(DISTINCT principal) AS principals, MAX(principal_name) AS principal_name, "
            "MAX(team) AS team, MIN(created_at) AS started_at, "
            "MAX(COALESCE(settled_at, created_at)) AS ended_at, "
            "COUNT(DISTINCT exchange_id) AS turns, COUNT(DISTINCT agent_id) AS agents, "
            f"COUNT(DISTINCT CASE WHEN {_OK_ROW} THEN exchange_id END) AS ok_turns, "
            "SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens, "
            "SUM(cache_write_5m_tokens) AS cache_write_5m_tokens, "
            "SUM(cache_write_1h_tokens) AS cache_write_1h_tokens, "
            "SUM(cache_read_tokens) AS cache_read_tokens, SUM(cost_pusd) AS cost_pusd "
            f"FROM billing_ledger{where} GROUP BY session_id "
            "ORDER BY MIN(created_at) DESC, session_id LIMIT ?")
        return await self.db.fetch(sql, *args, int(limit))

    async def session_rows(self, session_id: str, limit: int, principal: str | None = None,
                           team: str | None = None) -> list[dict[str, Any]]:
        """The first ``limit`` rows of one session (of ``principal`` / ``team`` only, when
        given), oldest first: the turns of its page."""
        where, args = _session_filter(None, None, principal, team)
        sql = (f"SELECT * FROM billing_ledger{where} AND session_id = ? "  # noqa: S608
               "ORDER BY created_at, id LIMIT ?")
        return await self.db.fetch(sql, *args, session_id, int(limit))

    async def usage_by_day(self, since: float | None, until: float | None
                           ) -> list[dict[str, Any]]:
        """Tokens, searches, cost and unpriced rows per UTC day, model and upstream key, of
        the rows that cost money (for reconciliation against the upstream's own report)."""
        where, args = time_filter(since, until)
        where += (" AND " if where else " WHERE ") + f"kind IN {CHARGED_KINDS}"
        day = _DAY[self.db.dialect]
        # A model priced by the unknown-model rule is named as the client named it.
        sql = (f"SELECT {day} AS day, CASE WHEN priced_model IS NULL OR priced_model = "  # noqa: S608
               "'unknown_model' THEN model ELSE priced_model END AS model, "
               "key_id, SUM(input_tokens) AS input_tokens, "
               "SUM(output_tokens) AS output_tokens, "
               "SUM(cache_write_5m_tokens) AS cache_write_5m_tokens, "
               "SUM(cache_write_1h_tokens) AS cache_write_1h_tokens, "
               "SUM(cache_read_tokens) AS cache_read_tokens, "
               "SUM(web_search_requests) AS web_search_requests, "
               "SUM(cost_pusd) AS cost_pusd, SUM(unpriced) AS unpriced, COUNT(*) AS rows "
               f"FROM billing_ledger{where} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
        return await self.db.fetch(sql, *args)

    # -- batches -----------------------------------------------------------------------------

    async def open_batch(self, batch: Batch, rows: list[dict[str, Any]],
                         reservation: Reservation | None) -> None:
        """Settle the submit's rows (at $0) and keep its reservation held for the batch:
        the hold moves from ``billing_reservations`` (an instance's, released if it dies) to
        ``billing_batches`` (released as its results are priced)."""
        ordered = sorted(rows, key=_by_id)

        async def unit(tx: Tx) -> None:
            held = 0
            if reservation is not None:
                if await tx.execute("DELETE FROM billing_reservations WHERE exchange_id = ?",
                                    reservation.exchange_id):
                    held = reservation.amount_pusd
                else:
                    # Reconciliation took this instance for dead and charged the estimate on
                    # the submit's row, which these rows replace at $0: take it back. The
                    # batch goes on with no hold; its results are charged as they come.
                    charged = int(await tx.fetchval(
                        "SELECT COALESCE(SUM(cost_pusd), 0) FROM billing_ledger "
                        "WHERE exchange_id = ? AND state = 'reconciled'",
                        reservation.exchange_id))
                    await _move(tx, reservation.buckets, 0, -charged)
            for row in ordered:
                await write_row(tx, row, UPSERT)
            await tx.execute(
                "INSERT INTO billing_batches (batch_id, exchange_id, created_at, principal, "
                "owners, attribution, estimates, buckets, held_pusd) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (batch_id) DO NOTHING",
                batch.batch_id, batch.exchange_id, batch.created_at, batch.principal,
                "\n".join(batch.owners), orjson.dumps(batch.attribution).decode(),
                orjson.dumps(batch.estimates).decode(),
                "\n".join(reservation.buckets if held and reservation else []), held)

        await self._run(unit, f"billing: opening batch {batch.batch_id}")

    async def batch(self, batch_id: str) -> Batch | None:
        row = await self.db.fetchone("SELECT * FROM billing_batches WHERE batch_id = ?",
                                     batch_id)
        return None if row is None else Batch.from_row(row)

    async def settle_batch(self, batch_id: str | None, rows: list[dict[str, Any]],
                           ended: bool, buckets: list[str] | None = None) -> int:
        """Write result rows not written before (a results file fetched twice is charged
        once) and charge their cost to the batch's buckets, releasing each new result's
        estimate from the batch's hold, and the whole rest of it once ``ended`` (every
        result seen). ``batch_id`` None: a batch midway did not see submitted, charged to
        ``buckets`` with no hold. What was newly charged."""
        async def unit(tx: Tx) -> int:
            batch = None
            if batch_id is not None:
                batch = await tx.fetchone(
                    "SELECT * FROM billing_batches WHERE batch_id = ?"  # noqa: S608
                    f"{_LOCK[self.db.dialect]}", batch_id)
            estimates = orjson.loads(batch["estimates"]) if batch is not None else {}
            charged = released_for = new = 0
            for row in sorted(rows, key=_by_id):
                if await write_row(tx, row, KEEP):
                    new += 1
                    charged += int(row["cost_pusd"])
                    released_for += int(estimates.get(row.get("custom_id"), 0))
            if batch is None:
                if charged and buckets:
                    await _move(tx, sorted(buckets), 0, charged)
                return charged
            held = int(batch["held_pusd"])
            released = held if ended else min(held, released_for)
            held_on = [k for k in batch["buckets"].split("\n") if k]
            if held_on:
                await _move(tx, held_on, released, charged)
            await tx.execute(
                "UPDATE billing_batches SET held_pusd = held_pusd - ?, charged_pusd = "
                "charged_pusd + ?, results = results + ?, ended = ? WHERE batch_id = ?",
                released, charged, new, int(ended or bool(batch["ended"])), batch_id)
            return charged

        charged: int = await self._run(unit, f"billing: settling batch {batch_id}")
        return charged

    async def batches(self, held_only: bool = False, limit: int = 100
                      ) -> list[dict[str, Any]]:
        """Batches submitted through midway, newest first: who submitted each, what it still
        holds on its budgets, what its results were charged so far, and any release."""
        where = " WHERE held_pusd > 0" if held_only else ""
        rows = await self.db.fetch(
            "SELECT batch_id, created_at, principal, attribution, held_pusd, "  # noqa: S608
            f"charged_pusd, results, ended, released_at, released_by FROM billing_batches{where} "
            "ORDER BY created_at DESC, batch_id LIMIT ?", limit)
        return [dict(r) for r in rows]

    async def release_batch(self, batch_id: str, actor: str, now: float
                            ) -> dict[str, Any] | None:
        """Release all a batch still holds on its budgets, recording who did and when: for
        a batch whose results will never be fetched through midway (read at the upstream
        directly, or expired there). Results fetched afterwards are still charged, with no
        hold to release. The batch's row as it was (None: no such batch)."""
        lock = _LOCK[self.db.dialect]

        async def unit(tx: Tx) -> dict[str, Any] | None:
            row = await tx.fetchone(
                f"SELECT * FROM billing_batches WHERE batch_id = ?{lock}",  # noqa: S608
                batch_id)
            if row is None:
                return None
            held = int(row["held_pusd"])
            if held:
                await _move(tx, [k for k in row["buckets"].split("\n") if k], held, 0)
                await tx.execute("UPDATE billing_batches SET held_pusd = 0, released_at = ?, "
                                 "released_by = ? WHERE batch_id = ?", now, actor, batch_id)
            return dict(row)

        before: dict[str, Any] | None = await self._run(
            unit, f"billing: releasing batch {batch_id}", _ADMIN_DEADLINE)
        return before

    # -- spend limits ------------------------------------------------------------------------

    async def spend_limits(self) -> list[dict[str, Any]]:
        rows = await self.db.fetch("SELECT * FROM billing_spend_limits "
                                   "ORDER BY created_at, id")
        return [dict(r) for r in rows]

    async def put_spend_limit(self, new: dict[str, Any], actor: str, audit_id: str
                              ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Create or replace the limit of (scope type, scope id, period), keeping the id of
        one already there, and audit it in the same transaction: (before, after)."""
        lock = _LOCK[self.db.dialect]

        async def unit(tx: Tx) -> tuple[dict[str, Any] | None, dict[str, Any]]:
            find = ("SELECT * FROM billing_spend_limits WHERE scope_type = ? "  # noqa: S608
                    f"AND scope_id = ? AND period = ?{lock}")
            key = (new["scope_type"], new["scope_id"], new["period"])
            old = await tx.fetchone(find, *key)
            before = dict(old) if old is not None else None
            await tx.execute(
                "INSERT INTO billing_spend_limits (id, scope_type, scope_id, period, "
                "amount_cents, created_at, updated_at, created_by) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope_type, scope_id, period) DO UPDATE "
                "SET amount_cents = excluded.amount_cents, updated_at = excluded.updated_at",
                new["id"], *key, new["amount_cents"], new["created_at"], new["updated_at"],
                actor)
            row = await tx.fetchone(find.removesuffix(lock), *key)
            assert row is not None
            after = dict(row)
            await self._audit(tx, audit_id, new["updated_at"], actor, "spend_limit.upsert",
                              str(after["id"]), before, after)
            return before, after

        result: tuple[dict[str, Any] | None, dict[str, Any]] = await self._run(
            unit, "billing: saving a spend limit", _ADMIN_DEADLINE)
        return result

    async def delete_spend_limit(self, limit_id: str, actor: str, audit_id: str,
                                 now: float) -> dict[str, Any] | None:
        async def unit(tx: Tx) -> dict[str, Any] | None:
            row = await tx.fetchone("SELECT * FROM billing_spend_limits WHERE id = ?"  # noqa: S608
                                    f"{_LOCK[self.db.dialect]}", limit_id)
            if row is None:
                return None
            await tx.execute("DELETE FROM billing_spend_limits WHERE id = ?", limit_id)
            await self._audit(tx, audit_id, now, actor, "spend_limit.delete", limit_id,
                              dict(row), None)
            return dict(row)

        result: dict[str, Any] | None = await self._run(unit, "billing: deleting a spend limit",
                                                        _ADMIN_DEADLINE)
        return result

    @staticmethod
    async def _audit(tx: Tx, audit_id: str, now: float, actor: str, action: str,
                     target: str, before: dict[str, Any] | None,
                     after: dict[str, Any] | None) -> None:
        await tx.execute(
            "INSERT INTO billing_spend_audit (id, created_at, actor, action, target_id, "
            "before_json, after_json) VALUES (?, ?, ?, ?, ?, ?, ?)", audit_id, now, actor,
            action, target, None if before is None else orjson.dumps(before).decode(),
            None if after is None else orjson.dumps(after).decode())

    async def spend_audit(self, limit: int, after_id: str | None) -> list[dict[str, Any]]:
        """Audit events, newest first; ``after_id``: those older than that one."""
        if after_id is None:
            rows = await self.db.fetch("SELECT * FROM billing_spend_audit "
                                       "ORDER BY id DESC LIMIT ?", limit)
        else:
            rows = await self.db.fetch("SELECT * FROM billing_spend_audit WHERE id < ? "
                                       "ORDER BY id DESC LIMIT ?", after_id, limit)
        return [dict(r) for r in rows]

    async def principal_spend(self, principal: str, since: float) -> int:
        """What ``principal`` was charged since ``since`` (settled and pending rows)."""
        value = await self.db.fetchval(
            f"SELECT COALESCE(SUM(cost_pusd), 0) FROM billing_ledger WHERE kind IN "  # noqa: S608
            f"{CHARGED_KINDS} AND principal = ? AND created_at >= ?", principal, since)
        return int(value or 0)

    async def note_principal(self, principal: str, name: str, groups: str, kind: str,
                             subject: str | None) -> None:
        """Remember a principal's groups (for ``/effective``)."""
        await self.db.execute(
            "INSERT INTO billing_principals (principal, name, groups, seen_at, kind, subject) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (principal) DO UPDATE SET "
            "name = excluded.name, groups = excluded.groups, seen_at = excluded.seen_at, "
            "kind = excluded.kind, subject = excluded.subject", principal, name, groups,
            time.time(), kind, subject)

    async def principals(self, ids: list[str] | None, after: str | None, limit: int
                         ) -> list[dict[str, Any]]:
        if ids is not None:
            marks = ", ".join("?" for _ in ids) or "NULL"
            rows = await self.db.fetch("SELECT * FROM billing_principals "  # noqa: S608
                                       f"WHERE principal IN ({marks})", *ids)
        else:
            rows = await self.db.fetch("SELECT * FROM billing_principals WHERE principal > ? "
                                       "ORDER BY principal LIMIT ?", after or "", limit)
        return [dict(r) for r in rows]

    async def rows(self, since: float | None = None) -> list[dict[str, Any]]:
        where, args = time_filter(since, None)
        sql = f"SELECT * FROM billing_ledger{where} ORDER BY created_at, id"  # noqa: S608
        return await self.db.fetch(sql, *args)


# A row that answered (or is still in flight): a session's errors are its requests without one.
_OK_ROW = ("kind <> 'reprice' AND (state = 'pending' OR (status >= 200 AND status < 400 "
           "AND error IS NULL))")


def _session_filter(since: float | None, until: float | None, principal: str | None,
                    team: str | None) -> tuple[str, list[Any]]:
    """The rows of Claude Code sessions (count_tokens calls are no turns), in a period, of
    one principal or team when given."""
    where, args = time_filter(since, until)
    clauses = ["session_id IS NOT NULL", "path NOT LIKE '%count_tokens%'"]
    if principal is not None:
        clauses.append("principal = ?")
        args.append(principal)
    if team is not None:
        clauses.append("team = ?")
        args.append(team)
    return (where + " AND " if where else " WHERE ") + " AND ".join(clauses), args


# Counters are 64-bit: spent + reserved + an amount stays below 2**65, so a limit at or above
# it is never reached; a limit's room is checked in SQL only where no 64-bit sum overflows.
_NEVER_REACHED = 2**65
_SQL_ROOM_MAX = 2**62
_NO_ROOM_IN_SQL: Any = object()


def _room(limit: int | None, amount: int) -> int | None:
    """What a counter's spent + reserved may be for ``amount`` to fit under ``limit`` (None:
    no limit to check; _NO_ROOM_IN_SQL: checked in Python, from the counter read)."""
    if limit is None or limit >= _NEVER_REACHED:
        return None
    room = limit - amount
    return room if 0 <= room <= _SQL_ROOM_MAX and 0 <= amount <= _SQL_ROOM_MAX \
        else _NO_ROOM_IN_SQL


def _reserved_sql(op: str, count: int) -> str:
    """Add to (``+``) or take from (``-``) the reserved amount of ``count`` counters, by key."""
    marks = ", ".join("?" for _ in range(count))
    return (f"UPDATE billing_counters SET reserved_pusd = reserved_pusd {op} ? "  # noqa: S608
            f"WHERE key IN ({marks})")


async def _move(tx: Tx, keys: list[str], released: int, charged: int) -> None:
    """Release ``released`` and charge ``charged`` on each counter, in key order."""
    if released or charged:
        for key in sorted(keys):
            await tx.execute("UPDATE billing_counters SET reserved_pusd = reserved_pusd - ?, "
                             "spent_pusd = spent_pusd + ? WHERE key = ?",
                             released, charged, key)


def _by_id(row: dict[str, Any]) -> str:
    return str(row["id"])


def _attempt(row: dict[str, Any]) -> int:
    return int(row["attempt"])
