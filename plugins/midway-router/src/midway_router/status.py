"""Status snapshots: written by the server, read by ``midway router status`` (a separate
process). One file per worker in the data dir; with Redis, one key per instance too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from midway.background import start_every
from midway.cliformat import Column, Table
from midway_router.router import Router

log = logging.getLogger("midway.router")

FILE_GLOB = "router-status-*.json"
_SEVERITY = {"ok": 0, "down": 1, "resting": 2, "disabled": 3}


def instance_id(worker_index: int) -> str:
    # The random part tells apart instances that share a process (embedding, tests).
    return f"{socket.gethostname()}:{os.getpid()}:{worker_index}:{secrets.token_hex(3)}"


class SnapshotWriter:
    """Writes the router's status every ``interval`` seconds while it changes."""

    def __init__(self, router: Router, data_dir: Path, worker_index: int) -> None:
        self.router = router
        self.instance = instance_id(worker_index)
        self.path = data_dir / f"router-status-{worker_index}.json"
        self.interval = max(router.settings.status_interval, 0.05)
        self._last = b""
        self._task: asyncio.Task[None] | None = None

    def payload(self) -> bytes:
        return orjson.dumps({"instance": self.instance, "written_at": time.time(),
                             "keys": self.router.status()})

    async def write(self) -> None:
        data = self.payload()
        # Unchanged keys (ignoring the timestamp) are not rewritten to the file, but Redis
        # copies expire, so they are refreshed on every tick.
        body = data[data.index(b',"keys"'):]
        if body != self._last:
            self._last = body
            await asyncio.to_thread(_write_atomic, self.path, data)
        await self.router.shared.write_status(self.instance, data, self.interval * 5 + 5)

    def start(self) -> None:
        # a full disk or Redis away must not stop routing; the next tick tries again
        self._task = start_every(self.interval, self.write, log=log,
                                 name="router: publishing key status")

    async def stop(self) -> None:
        """A stopped server publishes nothing: its snapshot goes, so status never shows a
        dead instance's keys as in flight."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        await self.router.shared.clear_status(self.instance)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_files(data_dir: Path) -> list[dict[str, Any]]:
    snapshots = []
    for path in sorted(data_dir.glob(FILE_GLOB)):
        try:
            snapshots.append(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            continue
    return snapshots


async def read_redis(url: str, prefix: str) -> list[dict[str, Any]]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        names = [name async for name in client.scan_iter(match=f"{prefix}:status:*")]
        values = await client.mget(names) if names else []
    finally:
        await client.aclose()
    return [orjson.loads(v) for v in values if v]


def merge(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per key across instances: in-flight and served summed, the gravest health,
    the latest quota figures."""
    merged: dict[tuple[str, str | None], dict[str, Any]] = {}
    for snapshot in sorted(snapshots, key=lambda s: s.get("written_at", 0)):
        for row in snapshot.get("keys", []):
            ident = (row["upstream"], row["key"])
            seen = merged.get(ident)
            if seen is None:
                merged[ident] = {**row, "instances": 1}
                continue
            seen["instances"] += 1
            seen["in_flight"] += row["in_flight"]
            seen["served"] += row["served"]
            seen["rests"] += row["rests"]
            if _SEVERITY.get(row["health"], 0) > _SEVERITY.get(seen["health"], 0):
                seen["health"] = row["health"]
            for field in ("resting_until", "disabled_until", "down_until"):
                if (row.get(field) or 0) > (seen.get(field) or 0):
                    seen[field] = row[field]
                    if field == "resting_until":
                        seen["resting_for"] = row.get("resting_for")
            if row["remaining"]:
                seen["remaining"], seen["limit"], seen["reset"] = \
                    row["remaining"], row["limit"], row["reset"]
    return list(merged.values())


def _when(epoch: float | None, now: float) -> str:
    if not epoch:
        return "-"
    stamp = datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")
    return f"{stamp} (in {max(0.0, epoch - now):.0f} s)"


def _until(row: Mapping[str, Any]) -> float | None:
    until = row.get("disabled_until") or row.get("resting_until") or row.get("down_until")
    return float(until) if until else None


def table(rows: list[dict[str, Any]], wide: bool = False) -> str:
    """A plain-text table for people (fits 100 columns unless ``wide``)."""
    now = time.time()
    columns = [
        Column("UPSTREAM", "upstream", 16),
        Column("KEY", lambda r: r["key"] or "passthrough", 13),
        Column("HEALTH", "health", 9),
        Column("IN FLIGHT", "in_flight", 9, right=True),
        Column("SERVED", "served", 7, right=True),
        Column("REQ LEFT", lambda r: (r.get("remaining") or {}).get("requests"), 8, right=True),
        Column("TOK LEFT", lambda r: (r.get("remaining") or {}).get("tokens"), 9, right=True),
        Column("UNTIL", lambda r: _when(_until(r), now), 20),
    ]
    return Table(columns, wide=wide).render(rows)
