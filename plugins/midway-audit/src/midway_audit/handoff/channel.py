"""The relay's side of the audit: the writer process, and what the relay hands it.

Per request the relay copies two frames into the shared ring (ring.py): the intent
(write-ahead) and the record — its metadata as JSON, the bodies as the bytes the relay already
holds. Once per ``batch_linger`` (not per request: it costs a system call that wakes another
process) it tells the writer how far the ring is filled with one small write on the socket,
and it reads the writer's status lines. Everything else (parsing, reassembly, redaction,
hashing, commits) happens in the writer process (writer_process.py), on another core.

Backpressure: when the ring is three quarters full (the writer is behind and its own queue is
full), new requests wait in ``pre_request`` until the writer catches up
(``on_full = "block"``; frames that find no room wait in order in the relay's memory), or
records are dropped and counted (``"drop"``). If the writer process dies, the relay starts a
new one on the same ring, which reads on where the dead one stopped committing: records the
dead one had taken but not committed are read again (the ring's room is given back only once
they are committed; those the dead one did commit are skipped). Its intents belong to the
relay's instance number, which the new writer shares: the requests still in flight get their
real record from it, once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any

import orjson

from midway.storage.retry import STORE_WAIT
from midway_audit.config import AuditConfig
from midway_audit.handoff.frames import BY_SOCKET, CONFIG, HEADER, INTENT, RECORD, WAKE, frame
from midway_audit.handoff.ring import HOT, RingWriter, create

# How the writer process starts: ``python -m midway_audit.handoff.writer_process``, except that
# the ``midway`` and ``midway_audit`` packages' ``__init__`` (aiohttp, pluggy, the plugin: about
# 14 MB the writer never uses) run only if something asks one of them for a name only it
# defines (PEP 562 ``__getattr__``); the writer's modules import from the submodules.
_WRITER_START = """\
# midway-audit writer process (midway_audit.handoff.writer_process)
import importlib.util, runpy, sys
def shell(name):
    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    def init(attr):
        del module.__getattr__
        spec.loader.exec_module(module)
        return getattr(module, attr)
    module.__getattr__ = init
    sys.modules[name] = module
shell("midway")
shell("midway_audit")
runpy.run_module("midway_audit.handoff.writer_process", run_name="__main__", alter_sys=True)
"""

log = logging.getLogger("midway.audit")

_METRICS = frozenset({"queue_depth", "written", "dropped", "write_errors", "intents",
                      "recovered", "batch_seconds"})
# A wake-up frame's header (its one part, ``a``, is the 8-byte head): one write of two pieces.
_WAKE = HEADER.pack(WAKE, 0, 8, 0)


class WriterGone(RuntimeError):
    """The writer process could not start, or stopped."""


class WriterChannel:
    def __init__(self, config: AuditConfig, table: Mapping[str, Any] | None, data_dir: Path,
                 metrics: Any = None, instance: int = 0) -> None:
        """``table`` is the ``[audit]`` table ``config`` was built from, as written: the writer
        process builds its own config from it (and the environment it inherits); every
        writer process this channel starts writes intents under ``instance``, the relay's."""
        self.config = config
        self.instance = instance
        self.blocking = config.on_full == "block"
        self.durable = config.write_ahead_durable  # read for every intent
        self.table = table
        self.data_dir = data_dir
        self.metrics = metrics
        self.dropped = 0  # records the relay dropped (on_full = "drop")
        self.restarts = 0
        self.wake_delay = max(config.batch_linger, 0.001)
        self.waited = 0  # requests that waited for the writer to catch up (backpressure)
        self.intents_sent = 0
        self.state: dict[str, Any] = {}  # the writer's last status line
        self.proc: asyncio.subprocess.Process | None = None
        self._transport: asyncio.WriteTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ring: RingWriter | None = None
        self._ring_fd: int | None = None
        # frames that found no room in the ring, in order (only while the writer is behind)
        self._waiting: collections.deque[tuple[int, bytes, bytes, bytes]] = \
            collections.deque()
        self._woken_at = 0  # the ring's head the writer was last told of
        self._progress = asyncio.Event()  # set on every status line
        self._scheduled = False
        self._closing = False
        self._reader_task: asyncio.Task[None] | None = None
        self._durable: collections.deque[tuple[int, asyncio.Future[None]]] = \
            collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._high = 0  # ring bytes in use past which the writer is "far behind"
        # each status line's metric updates, by (metric, label, operation): the method they
        # call (a labelled child is looked up, under the client library's lock, once)
        self._metric_ops: dict[tuple[str, Any, str], Any] = {}

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer process and wait until its store is open (or fail with why)."""
        self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        if self._ring_fd is None:
            self._ring_fd = create(self.config.handoff_bytes, HOT)
            self._ring = RingWriter(self._ring_fd)
            self._high = self._ring.capacity * 3 // 4
        # A writer started after one died reads on from the same ring: the frames the dead
        # one had not taken are not lost (those it had taken but not committed are).
        assert self._ring is not None
        resume = {"orphans_before": self._ring.written}
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _WRITER_START, str(theirs.fileno()),
                str(self._ring_fd), str(self.config.writer_nice),
                stdin=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(), self._ring_fd))
        finally:
            theirs.close()
        self._woken_at = 0
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=1 << 20)
        self._transport, self._writer = writer.transport, writer
        # store_wait: the writer's first contact with the store waits as the relay's did (a
        # new process may find no route or name for the store for a moment that the relay's
        # pooled connections never see: seen as a replica's failed first start under compose)
        table = {"config": self.table, "data_dir": str(self.data_dir),
                 "log_level": logging.getLogger("midway").getEffectiveLevel(),
                 "instance": self.instance, "store_wait": STORE_WAIT.get(), **resume}
        writer.writelines(frame(CONFIG, orjson.dumps(table, default=str)))
        first = await reader.readline()
        status = orjson.loads(first) if first else {"error": "the writer process exited"}
        if not status.get("ready"):
            writer.close()
            self._transport = self._writer = None
            await self._reap()
            raise WriterGone(f"audit writer could not start: {status.get('error')}")
        self._status(status)
        self._reader_task = asyncio.create_task(self._read(reader, writer),
                                                name="midway-audit-status")
        self._wake()  # frames that waited while a new writer started

    async def close(self) -> None:
        """Hand over everything, let the writer commit it, wait for it to exit."""
        self._closing = True
        if self._transport is not None:
            await self._hand_over()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._ring_fd is not None:
            os.close(self._ring_fd)
            self._ring_fd = None

    async def _hand_over(self) -> None:
        while self._waiting and self._transport is not None:  # the writer makes room
            self._wake()
            self._progress.clear()
            await self._progress.wait()
        self._wake()
        if self._transport is not None:
            self._transport.write_eof()
        if self._reader_task is not None:
            await self._reader_task
        await self._reap()
        self._transport = None

    async def _reap(self) -> None:
        proc = self.proc
        if proc is None:
            return
        # The writer ends once its queue is written (bounded by flush_timeout for a store
        # that keeps failing); past that, it is stopped.
        try:
            await asyncio.wait_for(proc.wait(), self.config.flush_timeout + 30)
        except TimeoutError:
            log.error("audit: the writer process did not exit; killing it")
            proc.kill()
            await proc.wait()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                raw = await reader.readline()
            except ConnectionError:
                # A writer that dies with wake-ups unread resets the socket instead of
                # closing it: the same end, and it must restart the writer all the same.
                break
            if not raw:
                break
            self._status(orjson.loads(raw))
        writer.close()
        self._transport = self._writer = None
        self._progress.set()
        self._release()  # nobody will answer these: let the requests go on
        self.intents_sent = 0  # the next writer counts its intents from zero
        if self._closing:
            return
        # The writer died under us: say so, and start another (its recovery picks up what
        # the dead one committed as intents).
        await self._reap()
        self.restarts += 1
        log.error("audit: the writer process stopped (exit %s); starting a new one",
                  self.proc.returncode if self.proc else None)
        while not self._closing:
            try:
                await self.start()
                return
            except Exception:
                log.exception("audit: could not restart the writer process")
                await asyncio.sleep(1.0)

    def _status(self, status: dict[str, Any]) -> None:
        metrics = self.metrics
        ops = self._metric_ops
        for name, label, op, value in status.pop("metrics", ()):
            if metrics is None or name not in _METRICS:
                continue
            call = ops.get((name, label, op))
            if call is None:
                metric = getattr(metrics, name)
                if label is not None:
                    metric = metric.labels(label)
                call = ops[(name, label, op)] = getattr(metric, op)
            call(value)
        self.state.update(status)
        self._progress.set()
        if self._waiting:
            self._wake()
        self._release(int(status.get("intents_done", 0)))

    def _release(self, done: float = float("inf")) -> None:
        """Let the requests waiting for the first ``done`` intents go on."""
        while self._durable and self._durable[0][0] <= done:
            _, waiter = self._durable.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # -- the relay's path ----------------------------------------------------------------------

    def send(self, kind: int, meta: bytes, a: bytes = b"", b: bytes = b"") -> None:
        """Hand over a frame; the writer is woken within ``wake_delay``."""
        ring = self._ring
        if self._waiting or ring is None or self._transport is None \
                or not ring.put(kind, meta, a, b):
            self._waiting.append((kind, meta, a, b))
            self._flush_waiting()
        if not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            # Waking the writer costs the relay a system call that schedules another
            # process: one wake-up per batch_linger carries every frame of that interval
            # (the writer would wait that long for its batch to fill anyway).
            self._loop.call_later(self.wake_delay, self._wake)

    def _flush_waiting(self) -> None:
        """Move the frames that wait into the ring (or, too large for it, onto the socket)
        while there is room, in order."""
        ring, transport, waiting = self._ring, self._transport, self._waiting
        while waiting and ring is not None and transport is not None:
            kind, meta, a, b = waiting[0]
            if not ring.put(kind, meta, a, b):
                if HEADER.size + len(meta) + len(a) + len(b) <= ring.max_frame:
                    return  # no room yet
                # Too large for the ring: a marker holds its place in the order, the frame
                # follows on the socket.
                if not ring.put(BY_SOCKET, b""):
                    return
                transport.writelines(frame(kind, meta, a, b))
            waiting.popleft()

    def _wake(self) -> None:
        self._scheduled = False
        self._flush_waiting()
        ring, transport = self._ring, self._transport
        if ring is None or transport is None or transport.is_closing():
            return
        head = ring.written
        if head != self._woken_at:
            self._woken_at = head
            transport.write(_WAKE + head.to_bytes(8, "little"))

    def record(self, meta: bytes, request_body: bytes, response: bytes) -> None:
        """Hand over a record (record.capture)."""
        if not self.blocking and self.over():
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.dropped.labels("queue_full").inc()
            return
        self.send(RECORD, meta, request_body, response)

    def intent(self, request_id: str, meta: bytes) -> Awaitable[None] | None:
        """Hand over an intent; with durable write-ahead, a future for its commit. Once in
        the ring it outlives this process: the writer reads it even after a kill -9 — so
        when the ring has no room for it, the request waits until it is in (``block``)."""
        self.send(INTENT, meta, request_id.encode())
        self.intents_sent += 1
        if self._waiting and self._transport is not None and self.blocking \
                and not self.durable:
            return self.room()
        if not self.durable or self._transport is None:
            return None
        assert self._loop is not None
        self._loop.call_soon(self._wake)  # the request waits for this one: no delay
        waiter = self._loop.create_future()
        self._durable.append((self.intents_sent, waiter))
        return waiter

    def over(self) -> bool:
        """Whether the writer is far behind: frames wait for room, or the ring is 3/4 full."""
        ring = self._ring
        return bool(self._waiting) or (ring is not None and ring.used() > self._high)

    async def room(self) -> None:
        """Wait until the writer has caught up (each status line says it made progress)."""
        self.waited += 1
        while self.over() and not self._closing:
            self._progress.clear()
            self._wake()
            await self._progress.wait()

    def status(self) -> dict[str, Any]:
        state = dict(self.state)
        state.pop("ready", None)
        state.pop("recovered", None)
        state["dropped"] = int(state.get("dropped", 0)) + self.dropped
        state["writer_restarts"] = self.restarts
        state["backpressure_waits"] = self.waited
        state["writer_pid"] = self.proc.pid if self.proc is not None else None
        return state
