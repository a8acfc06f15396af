"""The audit store: one implementation over SQLite and PostgreSQL (:mod:`midway.storage`).

Appends extend the hash chain in one transaction per batch that reads the chain head, inserts
the batch and moves the head, so that several processes (``--workers``) or instances sharing a
store append one after another and the chain stays a single, verifiable sequence: on SQLite
the transaction is ``BEGIN IMMEDIATE`` (the file's write lock); on PostgreSQL it locks the
chain row (``SELECT … FOR UPDATE``).

Intents (write-ahead, see :mod:`midway_audit.handoff.intents`) carry their instance's number;
an instance proves it is alive through :func:`midway.storage.liveness` (``audit-instances/``
lock files beside an SQLite file, advisory locks on PostgreSQL), which is how recovery tells a
dead instance's intents from a live one's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from midway.storage import Tx, liveness, open_database
from midway_audit.chain import GENESIS, Head, StoredRow, body_digest, content_digest, link_hash
from midway_audit.config import STORE_LABEL, AuditConfig
from midway_audit.parts import digests, expand
from midway_audit.record import Row
from midway_audit.stores.queries import (
    COLUMNS,
    LATEST,
    SUMMARY_COLUMNS,
    UNREFERENCED,
    Filter,
    full_record,
    summary_record,
)
from midway_audit.stores.schema import SCHEMA

_CHUNK = 500  # digests per IN (…) list: under SQLite's and PostgreSQL's parameter limits
_INSERT_RECORD = ("INSERT INTO audit_records (seq, ts, request_id, upstream_request_id, "
                  "principal, model, status, data, request_body, response_body, prev_hash, "
                  "hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class KnownParts:
    """Digests of parts this process has seen committed, so repeated parts (most of every
    Claude Code request) are not written again. Forgotten whenever the chain's anchor moves or
    its ``parts_epoch`` changes: pruning or body retention, in any process sharing the store,
    may have deleted parts no record refers to any more."""

    LIMIT = 200_000

    def __init__(self) -> None:
        self._digests: set[str] = set()
        self._seen: tuple[int, int] | None = None

    def check(self, anchor_seq: int, parts_epoch: int) -> None:
        if (anchor_seq, parts_epoch) != self._seen:
            self._digests.clear()
            self._seen = (anchor_seq, parts_epoch)

    def __contains__(self, digest: object) -> bool:
        return digest in self._digests

    def add(self, digests: Iterable[str]) -> None:
        if len(self._digests) > self.LIMIT:
            self._digests.clear()
        self._digests.update(digests)


def _supersede(row: Row, seq: int) -> None:
    """``row`` is the real record of a request already recorded as interrupted (a peer took
    its instance for dead): it names the record it replaces, which reads no longer show."""
    data = orjson.loads(row.data)
    data["supersedes"] = seq
    row.data = orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()
    row.content = content_digest(row.data, row.request_body, row.response_body)


async def _drop_part_refs(tx: Tx, where: str, *args: Any) -> None:
    """Forget the part references of the records ``where`` selects, and delete the parts no
    record refers to any more."""
    candidates = [r["digest"] for r in await tx.fetch(
        f"SELECT DISTINCT digest FROM audit_part_refs WHERE {where}", *args)]  # noqa: S608
    await tx.execute(f"DELETE FROM audit_part_refs WHERE {where}", *args)  # noqa: S608
    deleted = 0
    for i in range(0, len(candidates), _CHUNK):
        chunk = candidates[i:i + _CHUNK]
        deleted += await tx.execute(f"DELETE FROM audit_parts WHERE digest IN "  # noqa: S608
                                    f"({_marks(len(chunk))}) AND {UNREFERENCED}", *chunk)
    if deleted:  # writers forget the parts they know of (KnownParts)
        await tx.execute("UPDATE audit_chain SET parts_epoch = parts_epoch + 1 WHERE id = 1")


def _is_v2(row: Any) -> bool:
    """A record whose hash covers its bodies through their digests (chain.py)."""
    return bool(link_hash(row["prev_hash"], row["seq"], content_digest(
        row["data"], row["request_body"], row["response_body"])) == row["hash"])


def _marks(n: int) -> str:
    return ",".join("?" * n)


class AuditStore:
    """The audit trail in a :class:`midway.storage.Database`.

    :param inline: SQLite statements run on the caller's thread (the writer process: it has
        no loop to keep responsive, and a thread hop per batch would cost it).
    """

    def __init__(self, config: AuditConfig, inline: bool = False) -> None:
        self.db = open_database(config.store, schema=config.schema, label=STORE_LABEL,
                                synchronous=config.sqlite_synchronous, inline=inline,
                                max_pool=4, command_timeout=30)
        self.liveness = liveness(self.db, "audit")
        self.postgres = self.db.dialect == "postgresql"
        # PostgreSQL's LIKE is case-sensitive (SQLite's is not, for ASCII)
        self._like = "ILIKE" if self.postgres else "LIKE"
        # Appends serialise on the chain row (SQLite: the BEGIN IMMEDIATE write lock already)
        self._lock_chain = " FOR UPDATE" if self.postgres else ""
        self._known = KnownParts()

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        await self.db.open(SCHEMA)
        await self.db.execute("INSERT INTO audit_chain (id, seq, head_hash, anchor_seq, "
                              "anchor_hash) VALUES (1, 0, ?, 0, ?) ON CONFLICT DO NOTHING",
                              GENESIS, GENESIS)

    async def close(self) -> None:
        await self.db.close()
        await self.liveness.release()

    async def claim(self, instance: int) -> None:
        """Hold ``instance``'s liveness lock until ``close`` (a killed process loses it), so
        that recovery leaves its intents alone. Shared: the relay and its writer process both
        hold it, so the instance is dead only once neither runs (a writer killed and restarted
        by its live relay finds its own intents still owned)."""
        await self.liveness.claim(instance, shared=True)

    # -- writing -----------------------------------------------------------------------------

    async def append(self, rows: list[Row], retrying: bool = False,
                     intents: Sequence[tuple[str, float, str]] = (), instance: int = 0
                     ) -> Head:
        """Chain and commit ``rows``; return the head after the commit. With ``retrying``,
        rows whose request id is already stored (an earlier, ambiguous commit) are skipped.
        A record's intent is deleted in the transaction that writes it; ``intents`` of
        ``instance`` (of requests other than the rows') are written in it (see ``intend``)."""
        new_parts: dict[str, str] = {}

        async def unit(tx: Tx) -> Head:
            nonlocal rows
            chain = await tx.fetchone("SELECT seq, head_hash, anchor_seq, anchor_hash, "  # noqa: S608
                                      "parts_epoch FROM audit_chain WHERE id = 1"
                                      f"{self._lock_chain}")
            assert chain is not None, "audit_chain has its row from open()"
            seq, prev, anchor_seq = chain["seq"], chain["head_hash"], chain["anchor_seq"]
            known = self._known
            known.check(anchor_seq, chain["parts_epoch"])
            if intents:
                await self._insert_intents(tx, instance, intents)
            # Rows whose intent was never committed need neither lookup (Row.intent_stored);
            # a retry checks every row, as an earlier try may have stored it.
            named = [r.request_id for r in rows if retrying or r.intent_stored]
            if named:
                await tx.executemany("DELETE FROM audit_intents WHERE request_id = ?",
                                     [(rid,) for rid in named])
            stored = await self._stored(tx, named) if named else {}
            if retrying:  # an earlier try may have committed: what it stored is not again
                rows = [r for r in rows if r.request_id not in stored]
            else:
                for row in rows:
                    if row.request_id in stored:
                        _supersede(row, stored[row.request_id])
            values = []
            refs: list[tuple[str, int]] = []
            for row in rows:
                seq += 1
                digest = link_hash(prev, seq, row.content)
                row.seq, row.prev_hash, row.hash = seq, prev, digest
                values.append((seq, row.ts, row.request_id, row.upstream_request_id,
                               row.principal, row.model, row.status, row.data, row.request_body,
                               row.response_body, prev, digest))
                prev = digest
                for part, text in row.parts.items():
                    refs.append((part, seq))
                    if part not in known:
                        new_parts[part] = text
            if new_parts:
                await tx.executemany("INSERT INTO audit_parts (digest, body) VALUES (?, ?) "
                                     "ON CONFLICT DO NOTHING", list(new_parts.items()))
            if refs:
                await tx.executemany("INSERT INTO audit_part_refs (digest, seq) VALUES (?, ?) "
                                     "ON CONFLICT DO NOTHING", refs)
            if values:
                await tx.executemany(_INSERT_RECORD, values)
                await tx.execute("UPDATE audit_chain SET seq = ?, head_hash = ? WHERE id = 1",
                                 seq, prev)
            return Head(seq, prev, anchor_seq, chain["anchor_hash"])

        head = await self.db.run(unit)
        self._known.add(new_parts)
        return head

    @staticmethod
    async def _stored(tx: Tx, request_ids: list[str]) -> dict[str, int]:
        """The seq of the records stored for these request ids (the latest of each)."""
        found: dict[str, int] = {}
        for i in range(0, len(request_ids), _CHUNK):
            chunk = request_ids[i:i + _CHUNK]
            for r in await tx.fetch("SELECT request_id, MAX(seq) AS seq FROM audit_records "  # noqa: S608
                                    f"WHERE request_id IN ({_marks(len(chunk))}) "
                                    "GROUP BY request_id", *chunk):
                found[r["request_id"]] = int(r["seq"])
        return found

    async def intend(self, instance: int, intents: list[tuple[str, float, str]]) -> None:
        """Commit intents (request id, ts, metadata JSON) of ``instance``, one transaction.
        An intent only has to outlive midway (kill -9), not the machine: its commit is not
        durable; the record's own commit, which deletes it, is."""
        async def unit(tx: Tx) -> None:
            await self._insert_intents(tx, instance, intents)

        await self.db.run(unit, durable=False)

    @staticmethod
    async def _insert_intents(tx: Tx, instance: int,
                              intents: Sequence[tuple[str, float, str]]) -> None:
        await tx.executemany("INSERT INTO audit_intents (request_id, instance, ts, data) "
                             "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                             [(rid, instance, ts, data) for rid, ts, data in intents])

    async def recover(self, instance: int, build: Callable[[list[str]], list[Row]]) -> int:
        """Append ``build(intents)`` for the intents of every dead instance other than
        ``instance`` (skipping requests already recorded) and delete those intents; return
        how many records were appended."""
        others = [r["instance"] for r in await self.db.fetch(
            "SELECT DISTINCT instance FROM audit_intents WHERE instance != ?", instance)]
        recovered = 0
        for other in others:
            # held while its intents become records: no other peer recovers them too
            async with self.liveness.dead(other) as gone:
                if not gone:
                    continue
                rows = build(await self.left_by(other))
                await self.append(rows, retrying=True)
                recovered += sum(1 for row in rows if row.seq)
        return recovered

    async def left_by(self, instance: int) -> list[str]:
        """The committed intents of ``instance`` whose record has not come (metadata JSON)."""
        return [r["data"] for r in await self.db.fetch(
            "SELECT data FROM audit_intents WHERE instance = ? ORDER BY ts, request_id",
            instance)]

    async def prune(self, max_age: float | None, max_rows: int | None) -> int:
        """Delete the oldest records; the last deleted one's hash becomes the anchor."""

        async def unit(tx: Tx) -> int:
            chain = await tx.fetchone("SELECT seq, anchor_seq FROM audit_chain WHERE id = 1"  # noqa: S608
                                      f"{self._lock_chain}")
            assert chain is not None
            head_seq, anchor_seq = chain["seq"], chain["anchor_seq"]
            cut = anchor_seq
            if max_rows is not None:
                cut = max(cut, head_seq - max_rows)
            if max_age is not None:
                # Prune a prefix of the chain only: up to the first record young enough.
                first_young = await tx.fetchval("SELECT MIN(seq) FROM audit_records "
                                                "WHERE ts >= ?", time.time() - max_age)
                cut = max(cut, (first_young if first_young is not None else head_seq + 1) - 1)
            if cut <= anchor_seq:
                return 0
            anchor = await tx.fetchval("SELECT hash FROM audit_records WHERE seq = ?", cut)
            if anchor is None:
                return 0
            deleted = await tx.execute("DELETE FROM audit_records WHERE seq <= ?", cut)
            await _drop_part_refs(tx, "seq <= ?", cut)
            await tx.execute("UPDATE audit_chain SET anchor_seq = ?, anchor_hash = ? "
                             "WHERE id = 1", cut, anchor)
            return deleted

        return await self.db.run(unit)

    async def expire_bodies(self, max_age: float, after_seq: int = 0, page: int = 200
                            ) -> tuple[int, int]:
        """Delete the bodies (and body parts no other record uses) of records older than
        ``max_age`` seconds, keeping each body's digest so the record still verifies;
        ``(bodies expired, the last seq examined)``. Records of the chain's first form
        (version 1, which covers the bodies themselves) keep their bodies: deleting them
        would break the chain. ``after_seq`` resumes where the last sweep stopped."""
        cutoff = time.time() - max_age
        expired = 0
        while True:
            rows = await self.db.fetch(
                "SELECT seq, data, request_body, response_body, prev_hash, hash, ts "
                "FROM audit_records WHERE seq > ? AND ts < ? AND (request_body IS NOT NULL "
                "OR response_body IS NOT NULL) ORDER BY seq LIMIT ?", after_seq, cutoff, page)
            if not rows:
                # resume next time before the first record that was still young (seq and ts
                # are not in the same order across instances)
                first_young = await self.db.fetchval(
                    "SELECT MIN(seq) FROM audit_records WHERE ts >= ?", cutoff)
                if first_young is not None:
                    after_seq = min(after_seq, first_young - 1)
                return expired, after_seq
            batch = [r for r in rows if _is_v2(r)]  # v1 (and tampered) rows keep theirs

            async def unit(tx: Tx, batch: list[Any] = batch) -> int:
                # the chain row first, as appends lock it (deleting parts may move its
                # parts_epoch): PostgreSQL would otherwise see the two wait for each other
                await tx.fetchval(f"SELECT parts_epoch FROM audit_chain WHERE id = 1"  # noqa: S608
                                  f"{self._lock_chain}")
                for r in batch:
                    await tx.execute(
                        "UPDATE audit_records SET request_body = NULL, response_body = NULL, "
                        "request_body_sha256 = ?, response_body_sha256 = ? "
                        "WHERE seq = ? AND hash = ?", body_digest(r["request_body"]),
                        body_digest(r["response_body"]), r["seq"], r["hash"])
                if batch:
                    seqs = [r["seq"] for r in batch]
                    await _drop_part_refs(tx, f"seq IN ({_marks(len(seqs))})", *seqs)
                return len(batch)

            expired += await self.db.run(unit)
            after_seq = rows[-1]["seq"]

    # -- reading -----------------------------------------------------------------------------

    async def head(self) -> Head:
        async def unit(tx: Tx) -> Head:
            chain = await tx.fetchone("SELECT seq, head_hash, anchor_seq, anchor_hash "
                                      "FROM audit_chain WHERE id = 1")
            assert chain is not None
            count = await tx.fetchval("SELECT COUNT(*) FROM audit_records")
            return Head(chain["seq"], chain["head_hash"], chain["anchor_seq"],
                        chain["anchor_hash"], count)

        return await self.db.run(unit)

    async def query(self, filt: Filter, limit: int) -> list[dict[str, Any]]:
        """Records without bodies, newest first."""
        where, args = filt.where(self._like)
        where = f"{where} AND {LATEST}" if where else f" WHERE {LATEST}"
        rows = await self.db.fetch(f"SELECT {SUMMARY_COLUMNS} FROM audit_records{where} "  # noqa: S608
                                   "ORDER BY ts DESC, seq DESC LIMIT ?", *args, limit)
        return [summary_record(r) for r in rows]

    async def get(self, request_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchone(f"SELECT {COLUMNS} FROM audit_records "  # noqa: S608
                                     "WHERE request_id = ? ORDER BY seq DESC LIMIT 1",
                                     request_id)
        if row is None:
            return None
        found = [StoredRow(**row)]
        await self._expand(found)
        return full_record(found[0])

    async def parts(self, digests: list[str]) -> dict[str, str]:
        """Stored body parts by digest (those that exist)."""
        found: dict[str, str] = {}
        for i in range(0, len(digests), _CHUNK):
            chunk = digests[i:i + _CHUNK]
            rows = await self.db.fetch("SELECT digest, body FROM audit_parts "  # noqa: S608
                                       f"WHERE digest IN ({_marks(len(chunk))})", *chunk)
            found.update((r["digest"], r["body"]) for r in rows)
        return found

    async def after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        """Records (without bodies) with a seq above ``seq``, oldest first (for ``tail``)."""
        rows = await self.db.fetch(f"SELECT {SUMMARY_COLUMNS} FROM audit_records "  # noqa: S608
                                   "WHERE seq > ? ORDER BY seq LIMIT ?", seq, limit)
        return [summary_record(r) for r in rows]

    async def scan(self, after_seq: int, limit: int) -> list[StoredRow]:
        """Rows as stored (request bodies as templates), for verification."""
        rows = await self.db.fetch(f"SELECT {COLUMNS} FROM audit_records "  # noqa: S608
                                   "WHERE seq > ? ORDER BY seq LIMIT ?", after_seq, limit)
        return [StoredRow(**r) for r in rows]

    async def scan_filtered(self, filt: Filter, after_seq: int, limit: int
                            ) -> list[StoredRow]:
        """Matching rows with whole bodies, oldest first (for export)."""
        where, args = filt.where(self._like)
        where = f"{where} AND seq > ?" if where else " WHERE seq > ?"
        rows = await self.db.fetch(f"SELECT {COLUMNS} FROM audit_records{where} "  # noqa: S608
                                   "ORDER BY seq LIMIT ?", *args, after_seq, limit)
        found = [StoredRow(**r) for r in rows]
        await self._expand(found)
        return found

    async def _expand(self, rows: list[StoredRow]) -> None:
        """Replace request-body templates by the whole bodies (see parts.py), in place."""
        wanted = sorted({d for row in rows for d in digests(row.request_body)})
        if not wanted:
            return
        found = await self.parts(wanted)
        for row in rows:
            row.request_body = expand(row.request_body, found)

