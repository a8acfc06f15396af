"""The relay → writer hand-off: the shared ring, records too large for it (by socket), the
writer process dying, backpressure through a full ring, and durable write-ahead — with real
processes and real SQLite."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import mmap
import os
import random
import signal
import sqlite3
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import orjson
from conftest import HEADERS, data_dir, get, records, service
from hypothesis import given, settings
from hypothesis import strategies as st

from midway.testing import Reply, RunningMidway, wait_for
from midway_audit.config import MiB
from midway_audit.handoff import ring
from midway_audit.handoff.frames import HEADER
from midway_audit.handoff.ring import DATA, RingReader, RingWriter

# -- the ring on its own -----------------------------------------------------------------------


@contextlib.contextmanager
def ring_pair(capacity: int, hot: int = 0) -> Iterator[tuple[RingWriter, RingReader]]:
    """Both ends of one ring, as the relay and the writer process map it."""
    fd = ring.create(capacity + DATA, hot)
    try:
        writer, reader = RingWriter(fd), RingReader(fd)
    finally:
        os.close(fd)  # the mappings keep the memory
    try:
        yield writer, reader
    finally:
        writer.close()
        reader.close()


Frame = tuple[int, bytes, bytes, bytes]


def make_frame(n: int, kind: int, size: int, cuts: tuple[int, int]) -> Frame:
    """Frame number ``n``: ``size`` bytes of content no other frame has, cut in three."""
    content = random.Random(n).randbytes(size)
    low, high = sorted(cuts)
    return kind, content[:low], content[low:high], content[high:]


def put(writer: RingWriter, item: Frame) -> bool:
    return writer.put(*item)


def take(writer: RingWriter, reader: RingReader) -> Frame | None:
    """The next frame up to the head the writer published (what a wake-up carries)."""
    found = reader.peek(writer.head)
    if found is None:
        return None
    kind, meta, a, b, end = found
    reader.advance(end)
    return kind, meta, a, b


@settings(max_examples=150, deadline=None)
@given(st.integers(4 * HEADER.size, 4096), st.sampled_from([0, 1, 4, 7]), st.data())
def test_frames_come_out_whole_and_in_order_across_wrap_arounds(capacity: int, hot: int,
                                                                data: st.DataObject) -> None:
    """Small rings, so that every way a frame can meet the end of the ring comes up (the
    rest too short even for a wrap marker, a frame ending exactly at the end, going back
    to a hot start of a sixteenth or a quarter of the ring...)."""
    with ring_pair(capacity, capacity * hot // 16) as (writer, reader):
        largest = writer.max_frame - HEADER.size
        expected: collections.deque[Frame] = collections.deque()
        n = 0
        for _ in range(data.draw(st.integers(1, 200))):
            if data.draw(st.booleans()):
                size = data.draw(st.integers(0, largest))
                cuts = (data.draw(st.integers(0, size)), data.draw(st.integers(0, size)))
                item = make_frame(n, data.draw(st.integers(1, 255)), size, cuts)
                n += 1
                if not put(writer, item):
                    # only a ring holding frames is ever full for a frame of max_frame or
                    # less; once the reader has taken them there is room again
                    assert expected
                    while expected:
                        assert take(writer, reader) == expected.popleft()
                    assert put(writer, item)
                expected.append(item)
            else:
                for _ in range(data.draw(st.integers(0, len(expected)))):
                    assert take(writer, reader) == expected.popleft()
            assert 0 <= writer.used() <= writer.capacity
        while expected:
            assert take(writer, reader) == expected.popleft()
        assert take(writer, reader) is None
        assert writer.used() == 0


def test_a_mebibyte_ring_carries_frames_of_random_sizes_through_many_wrap_arounds() -> None:
    rng = random.Random(20240611)
    with ring_pair(MiB) as (writer, reader):
        expected: collections.deque[Frame] = collections.deque()
        n = 0
        while writer.head < 40 * writer.capacity:
            # the writer fills what it can, the reader takes a random share of it
            while True:
                size = rng.randint(0, writer.max_frame - HEADER.size)
                item = make_frame(n, rng.randint(1, 5), size,
                                  (rng.randint(0, size), rng.randint(0, size)))
                if not put(writer, item):
                    break
                expected.append(item)
                n += 1
            # full for this frame: it needs at most twice max_frame, half the ring (and the
            # relay keeps a guard page clear)
            assert writer.used() > writer.capacity // 2 - writer.guard
            for _ in range(rng.randint(1, len(expected))):
                assert take(writer, reader) == expected.popleft()
        while expected:
            assert take(writer, reader) == expected.popleft()
        assert take(writer, reader) is None
        assert n > 300


def test_a_writer_keeping_up_keeps_the_relay_in_the_hot_start_of_the_ring() -> None:
    """The relay goes back to the ring's first ``hot`` bytes once the writer has taken what
    was there: those pages stay allocated (no page fault per 4 KiB written), the rest is only
    touched while the writer is behind, and freed once it catches up."""
    hot = 256 * 1024
    fd = ring.create(4 * MiB + DATA, hot)
    try:
        writer, reader = RingWriter(fd), RingReader(fd)

        def allocated() -> int:
            return os.fstat(fd).st_blocks * 512

        rng = random.Random(11)
        n = 0
        # a writer that keeps up: never more than a few frames in flight
        for _ in range(2000):
            item = make_frame(n, 3, rng.randint(0, 20_000), (10, 20))
            n += 1
            assert put(writer, item)
            assert writer.head % writer.capacity + DATA <= hot + 20_000 + HEADER.size + DATA
            assert writer.used() <= 20_000 + HEADER.size  # the skipped cold rest is not in use
            assert take(writer, reader) == item
        assert writer.head > 4 * writer.capacity  # many laps, all in the hot start
        assert allocated() <= hot + 8 * mmap.PAGESIZE
        # a writer behind: the relay goes on into the cold rest
        behind = [make_frame(n + i, 3, 100_000, (10, 20)) for i in range(12)]
        for item in behind:
            assert put(writer, item)
        assert allocated() > hot + 800_000
        for item in behind:
            assert take(writer, reader) == item
        assert writer.used() == 0
        # caught up: back to the hot start at the next frame, the cold pages freed
        assert put(writer, make_frame(0, 3, 1000, (10, 20)))
        assert writer.head % writer.capacity == HEADER.size + 1000
        assert take(writer, reader) == make_frame(0, 3, 1000, (10, 20))
        assert allocated() <= hot + 8 * mmap.PAGESIZE
        writer.close()
        reader.close()
    finally:
        os.close(fd)


def test_a_full_ring_refuses_a_frame_until_the_reader_gives_room_back() -> None:
    with ring_pair(MiB) as (writer, reader):
        body = 100_000 - HEADER.size
        fitted = 0
        while put(writer, make_frame(fitted, 3, body, (10, 20))):
            fitted += 1
        assert fitted == MiB // 100_000
        assert not put(writer, make_frame(fitted, 3, body, (10, 20)))  # still full
        assert take(writer, reader) == make_frame(0, 3, body, (10, 20))
        # the next frame does not fit before the end of the ring: it takes the room the
        # reader gave back plus the rest of the ring, exactly what is free now but the
        # guard page (the relay stays a page behind the tail)
        assert writer.guard == mmap.PAGESIZE
        last = body - writer.guard
        assert not put(writer, make_frame(fitted, 3, last + 1, (10, 20)))
        assert put(writer, make_frame(fitted, 3, last, (10, 20)))
        assert writer.head % writer.capacity == 100_000 - writer.guard
        for n in range(1, fitted):
            assert take(writer, reader) == make_frame(n, 3, body, (10, 20))
        assert take(writer, reader) == make_frame(fitted, 3, last, (10, 20))
        assert take(writer, reader) is None


def test_the_room_given_back_is_freed_and_written_again() -> None:
    """The memory file holds what is in flight, not the whole ring: the writer frees the
    pages it gives back (both processes' resident memory counts the pages they touched)."""
    fd = ring.create(MiB + DATA)
    try:
        writer, reader = RingWriter(fd), RingReader(fd)

        def allocated() -> int:
            return os.fstat(fd).st_blocks * 512

        rng = random.Random(7)
        n = 0
        while writer.head < 5 * writer.capacity:
            batch = []
            while writer.used() < writer.capacity // 3:
                size = rng.randint(0, 200_000)
                item = make_frame(n, 3, size, (rng.randint(0, size), rng.randint(0, size)))
                n += 1
                assert put(writer, item)
                batch.append(item)
            # every byte written is in the memory file (the wrap markers' skips are not)
            assert allocated() >= sum(HEADER.size + len(m) + len(a) + len(b)
                                      for _, m, a, b in batch)
            for item in batch:
                assert take(writer, reader) == item
            # the first page (head and tail) and the page holding the tail are left
            assert writer.used() == 0 and allocated() <= 2 * mmap.PAGESIZE
        writer.close()
        reader.close()
    finally:
        os.close(fd)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_a_frame_of_max_frame_fits_an_empty_ring_wherever_it_stands(data: st.DataObject
                                                                    ) -> None:
    with ring_pair(MiB) as (writer, reader):
        offset = data.draw(st.integers(HEADER.size, writer.capacity - 1))
        max_frame, writer.max_frame = writer.max_frame, writer.capacity  # the filler is large
        # in two frames when one would not fit (the guard page): neither is past half the ring
        half = writer.capacity // 2
        first = offset if offset <= half else \
            half if offset - half >= HEADER.size else half - HEADER.size
        for size in (first, offset - first):
            if size:
                assert put(writer, make_frame(0, 1, size - HEADER.size, (0, 0)))
                assert take(writer, reader) is not None  # empty again
        assert writer.head == offset
        writer.max_frame = max_frame
        item = make_frame(1, 3, data.draw(st.integers(0, writer.max_frame - HEADER.size)),
                          (0, 100))
        assert put(writer, item)
        assert take(writer, reader) == item


def test_a_frame_over_half_the_ring_may_never_fit_hence_max_frame() -> None:
    """Why the channel sends frames over ``max_frame`` by socket: one that does not fit
    before the end of the ring needs its own size plus the rest of the ring, so a frame
    over half the ring can be refused by an empty ring for ever."""
    with ring_pair(MiB) as (writer, reader):
        max_frame, writer.max_frame = writer.max_frame, writer.capacity  # the ring alone
        size = writer.capacity // 2 + 1
        offset = writer.capacity - size + 1  # the frame misses the end by one byte
        assert put(writer, make_frame(0, 1, offset - HEADER.size, (0, 0)))
        assert take(writer, reader) is not None
        assert writer.used() == 0
        assert not put(writer, make_frame(1, 3, size - HEADER.size, (0, 0)))
        assert max_frame < size


# -- through the relay -------------------------------------------------------------------------


def message(text: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-6", "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": text}]}


def prose(tag: str, size: int) -> str:
    """``size`` characters of text no redaction pattern touches, unique to ``tag``."""
    line = f"{tag}: the quick brown fox jumps over the lazy dog.\n"
    return (line * (size // len(line) + 1))[:size]


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]
                ) -> tuple[int, str]:
    async with session.post(f"{url}/v1/messages", json=body, headers=HEADERS) as resp:
        await resp.read()
        return resp.status, resp.headers["x-midway-request-id"]


def post_all(running: RunningMidway, bodies: list[dict[str, Any]], concurrency: int = 1,
             timeout: float = 60) -> list[tuple[int, str]]:
    """Send ``bodies`` (``concurrency`` at a time); each answer's status and request id."""
    async def main() -> list[tuple[int, str]]:
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async def one(body: dict[str, Any]) -> tuple[int, str]:
                async with sem:
                    return await _post(s, running.url, body)
            return list(await asyncio.gather(*(one(b) for b in bodies)))
    return asyncio.run(main())


def audit_status(running: RunningMidway) -> dict[str, Any]:
    with urllib.request.urlopen(f"{running.url}/_midway/audit/status", timeout=10) as resp:
        status: dict[str, Any] = orjson.loads(resp.read())
    return status


def verified(running: RunningMidway) -> dict[str, Any]:
    result: dict[str, Any] = running.call(service(running).verify())
    return result


def one_record_each(running: RunningMidway, ids: list[str]) -> list[dict[str, Any]]:
    """Wait for the records of ``ids``; fail unless there is exactly one each, and no other."""
    wait_for(lambda: len(records(running)) >= len(ids), timeout=30)
    stored = records(running)
    assert sorted(r["id"] for r in stored) == sorted(ids)
    result = verified(running)
    assert result["ok"] and result["checked"] == len(ids), result
    return stored


@contextlib.contextmanager
def writer_stopped(running: RunningMidway) -> Iterator[int]:
    """The writer process stopped (SIGSTOP) for the block; continued after, whatever happens
    (the relay's shutdown waits for it)."""
    pid = int(audit_status(running)["writer_pid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed meanwhile, and reaped
            os.kill(pid, signal.SIGCONT)


def test_a_record_larger_than_the_ring_allows_comes_whole_and_in_order(fake_upstream,
                                                                        audited):
    running = audited(handoff_bytes=MiB)
    max_frame = service(running).writer._ring.max_frame
    big_question = prose("question", 400_000)
    big_answer = prose("answer", 400_000)
    assert len(big_question) > max_frame and len(big_answer) > max_frame
    fake_upstream.reply(Reply(), Reply(), Reply(),
                        Reply(content=[{"type": "text", "text": big_answer}], text_chunks=40),
                        Reply())
    bodies = [message("before"), message(big_question), message("between"),
              message("tell me a long story", stream=True), message("after")]
    sent = post_all(running, bodies)  # one after the other: seq order is request order
    assert [status for status, _ in sent] == [200] * 5
    ids = [request_id for _, request_id in sent]
    one_record_each(running, ids)
    full = [get(running, request_id) for request_id in ids]
    assert [r["seq"] for r in full] == sorted(r["seq"] for r in full)
    assert [orjson.loads(r["request_body"])["messages"][0]["content"] for r in full] == \
        ["before", big_question, "between", "tell me a long story", "after"]
    assert not full[1]["request_truncated"]
    streamed = orjson.loads(full[3]["response_body"])["content"]
    assert [(b["type"], b["text"]) for b in streamed] == [("text", big_answer)]
    assert not full[3]["response_truncated"]
    assert orjson.loads(full[4]["response_body"])["content"][0]["text"] == \
        "Hello from the fake upstream."


def test_a_killed_writer_process_is_replaced_and_recording_goes_on(fake_upstream, audited):
    running = audited()
    ids = [i for _, i in post_all(running, [message(f"first {n}") for n in range(5)])]
    wait_for(lambda: len(records(running)) == 5)
    for restart in (1, 2):
        old = int(audit_status(running)["writer_pid"])
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: audit_status(running)["writer_restarts"] == restart
                 and audit_status(running)["writer_pid"] not in (None, old), timeout=30)
        sent = post_all(running, [message(f"after kill {restart}, {n}") for n in range(5)],
                        concurrency=5)
        assert [status for status, _ in sent] == [200] * 5
        ids += [i for _, i in sent]
        one_record_each(running, ids)


def test_the_writer_process_records_without_loading_the_relays_imports(fake_upstream,
                                                                       audited):
    """The writer starts without the ``midway`` and ``midway_audit`` packages' ``__init__``
    (aiohttp, pluggy, the plugin: ~14 MB of its resident memory): none of aiohttp's compiled
    modules is mapped in it, and it records as before."""
    running = audited()
    sent = post_all(running, [message("lean"), message("lean stream", stream=True)])
    one_record_each(running, [i for _, i in sent])
    pid = int(audit_status(running)["writer_pid"])
    with open(f"/proc/{pid}/maps") as maps:
        mapped = maps.read()
    assert "/aiohttp/" not in mapped  # its compiled parsers and writers
    with open(f"/proc/{os.getpid()}/maps") as maps:  # the relay (this process) has them
        assert "/aiohttp/" in maps.read()


def test_the_writers_package_shells_run_the_real_init_when_asked_for_its_names() -> None:
    """A name only a package's ``__init__`` defines (``from midway import Exchange``) still
    resolves in the writer: the shell runs the real ``__init__`` then."""
    import subprocess
    import sys

    from midway_audit.handoff.channel import _WRITER_START

    shells, run = _WRITER_START.split("runpy.run_module(")
    check = ("import midway.storage, midway_audit.record\n"
             "assert 'aiohttp' not in sys.modules\n"
             "from midway import Exchange, __version__\n"
             "from midway_audit import register_metrics\n"
             "import midway.exchange\n"
             "assert Exchange is midway.exchange.Exchange and 'aiohttp' in sys.modules\n")
    assert run.startswith('"midway_audit.handoff.writer_process"')
    done = subprocess.run([sys.executable, "-c", shells + check], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_frames_a_dead_writer_never_took_are_recorded_by_the_next_one(fake_upstream,
                                                                       audited):
    """The writer stopped, requests answered (their records wait in the ring), the writer
    killed: its successor reads the same ring on from where it stopped."""
    running = audited()
    with writer_stopped(running) as pid:
        sent = post_all(running, [message(f"while stopped {n}") for n in range(8)],
                        concurrency=4)
        assert [status for status, _ in sent] == [200] * 8
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: audit_status(running)["writer_restarts"] == 1, timeout=30)
    stored = one_record_each(running, [i for _, i in sent])
    assert not any(r.get("interrupted") for r in stored)  # the full records, not intents
    assert all(r["status"] == 200 for r in stored)


def test_a_full_ring_makes_new_requests_wait_and_none_is_lost(fake_upstream, audited):
    total, concurrency = 30, 5
    running = audited(handoff_bytes=MiB)
    bodies = [message(prose(f"request {n}", 100_000)) for n in range(total)]
    # (the writer goes on before the pool waits for the requests)
    with ThreadPoolExecutor(1) as pool, writer_stopped(running):
        sending = pool.submit(post_all, running, bodies, concurrency)
        # the ring fills up (30 records of 100 KB, 1 MiB): then every request that starts
        # waits in pre_request, until all of the client's connections are waiting
        wait_for(lambda: audit_status(running)["backpressure_waits"] >= concurrency,
                 timeout=30)
        assert len(fake_upstream.messages_requests) < total
        assert not sending.done()
    sent = sending.result(timeout=60)
    assert [status for status, _ in sent] == [200] * total
    assert len(fake_upstream.messages_requests) == total
    one_record_each(running, [i for _, i in sent])
    status = audit_status(running)
    assert status["dropped"] == 0 and status["backpressure_waits"] >= concurrency


def test_with_on_full_drop_a_full_ring_drops_and_counts_and_never_blocks(fake_upstream,
                                                                          audited):
    total = 30
    running = audited(handoff_bytes=MiB, on_full="drop")
    bodies = [message(prose(f"request {n}", 100_000)) for n in range(total)]
    with writer_stopped(running):
        # all answered while the writer cannot take anything (a hang fails the timeout)
        sent = post_all(running, bodies, concurrency=5, timeout=30)
        assert [status for status, _ in sent] == [200] * total
        status = audit_status(running)
    dropped = status["dropped"]
    assert 0 < dropped < total
    assert status["backpressure_waits"] == 0
    assert running.midway.metrics.registry.get_sample_value(
        "midway_audit_records_dropped_total", {"reason": "queue_full"}) == dropped
    # what was not dropped is written once the writer goes on
    ids = {i for _, i in sent}
    wait_for(lambda: len(records(running)) == total - dropped, timeout=30)
    stored = [r["id"] for r in records(running)]
    assert len(set(stored)) == len(stored) and set(stored) <= ids
    assert verified(running)["ok"]


def test_durable_write_ahead_answers_every_request(fake_upstream, audited):
    total = 20
    running = audited(write_ahead="durable")
    sent = post_all(running, [message(f"durable {n}") for n in range(total)], concurrency=10)
    assert [status for status, _ in sent] == [200] * total
    one_record_each(running, [i for _, i in sent])
    # (the writer's metrics come with its status lines)
    wait_for(lambda: running.midway.metrics.registry.get_sample_value(
        "midway_audit_intents_total", {"result": "ok"}) == total)
    with sqlite3.connect(data_dir(running) / "audit.db") as con:
        assert con.execute("SELECT COUNT(*) FROM audit_intents").fetchone() == (0,)


def test_durable_write_ahead_goes_on_when_the_writer_dies_under_a_waiting_request(
        fake_upstream, audited):
    running = audited(write_ahead="durable")
    channel = service(running).writer
    with ThreadPoolExecutor(1) as pool, writer_stopped(running) as pid:
        sending = pool.submit(post_all, running, [message("held")])
        # the intent is handed over: the request waits for its commit, which a stopped
        # writer never makes
        wait_for(lambda: channel.intents_sent == 1)
        assert not fake_upstream.messages_requests
        os.kill(pid, signal.SIGKILL)  # the relay lets the request go, starts a writer
        [(status, request_id)] = sending.result(timeout=30)
    assert status == 200
    # (counted once the dead writer is reaped, which may be after the request went on)
    wait_for(lambda: audit_status(running)["writer_restarts"] == 1)
    [record] = one_record_each(running, [request_id])
    assert record["status"] == 200 and not record.get("interrupted")


def test_an_intent_that_finds_the_ring_full_holds_its_request_until_it_is_in(tmp_path):
    """An intent must be in the ring before its request goes upstream (the ring outlives the
    relay, the relay's memory does not): with the ring full, ``upstream_request`` waits."""
    from midway.options import load_table
    from midway.testing import make_exchange
    from midway_audit.config import AuditConfig
    from midway_audit.handoff.channel import WriterChannel
    from midway_audit.handoff.intents import intent_meta
    from midway_audit.record import capture

    async def main() -> None:
        table = {"store": f"sqlite:///{tmp_path}/audit.db", "handoff_bytes": MiB}
        config = load_table(AuditConfig, "audit", table, data_dir=tmp_path)
        channel = WriterChannel(config, table, tmp_path)
        await channel.start()
        assert channel.proc is not None
        pid = channel.proc.pid
        exchange = make_exchange(body={"model": "claude-sonnet-4-6", "max_tokens": 5,
                                       "messages": [{"role": "user",
                                                     "content": prose("q", 100_000)}]})
        exchange.status = 200
        os.kill(pid, signal.SIGSTOP)
        try:
            records_sent = 0
            while not channel.over() or not channel._waiting:  # the ring full, one waiting
                channel.record(*capture(exchange, True))
                records_sent += 1
            held = channel.intent(exchange.id, intent_meta(exchange))
            assert held is not None
            task = asyncio.ensure_future(held)
            done, _ = await asyncio.wait([task], timeout=0.3)
            assert not done  # the writer is stopped: no room, the request waits
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.wait_for(task, 30)
        assert not channel._waiting  # everything, the intent last, is in the ring
        assert channel.intent(exchange.id, intent_meta(exchange)) is None  # room again
        await channel.close()
        with sqlite3.connect(tmp_path / "audit.db") as con:
            assert con.execute("SELECT COUNT(*) FROM audit_records").fetchone() == \
                (records_sent,)

    asyncio.run(main())


def test_status_lines_apply_the_writers_metric_updates_each_time(tmp_path):
    """The relay applies each status line's updates to its metrics (the labelled child and
    method it calls are looked up once and kept: a second line must still reach the same
    metric, and another label its own child)."""
    from prometheus_client import CollectorRegistry

    from midway.options import load_table
    from midway_audit.config import AuditConfig
    from midway_audit.handoff.channel import WriterChannel
    from midway_audit.metrics import AuditMetrics

    registry = CollectorRegistry()
    config = load_table(AuditConfig, "audit", {"store": f"sqlite:///{tmp_path}/audit.db"},
                        data_dir=tmp_path)
    channel = WriterChannel(config, None, tmp_path, AuditMetrics(registry))
    channel._status({"metrics": [["written", None, "inc", 2], ["dropped", "a", "inc", 1],
                                 ["queue_depth", None, "set", 5], ["nope", None, "inc", 1]]})
    channel._status({"metrics": [["written", None, "inc", 3], ["dropped", "b", "inc", 4],
                                 ["dropped", "a", "inc", 1], ["queue_depth", None, "set", 1],
                                 ["batch_seconds", None, "observe", 0.002]]})
    value = registry.get_sample_value
    assert value("midway_audit_records_written_total") == 5
    assert value("midway_audit_records_dropped_total", {"reason": "a"}) == 2
    assert value("midway_audit_records_dropped_total", {"reason": "b"}) == 4
    assert value("midway_audit_queue_depth") == 1
    assert value("midway_audit_batch_seconds_count") == 1


def test_a_writer_started_while_its_postgresql_is_down_waits_store_wait_for_it(
        tmp_path, private_postgres, capfd):
    """The writer process's first contact with its store waits ``store_wait`` as the relay's
    own does (a new process may not reach the store for a moment the relay's connections
    never see); it used to fail at once, taking the relay's start-up with it."""
    from midway.options import load_table
    from midway.storage.retry import STORE_WAIT
    from midway_audit.config import AuditConfig
    from midway_audit.handoff.channel import WriterChannel

    async def main() -> None:
        STORE_WAIT.set(60.0)
        table = {"store": private_postgres.dsn, "schema": "audit_wait"}
        config = load_table(AuditConfig, "audit", table, data_dir=tmp_path)
        channel = WriterChannel(config, table, tmp_path)
        private_postgres.stop()
        starting = asyncio.ensure_future(channel.start())
        # the writer logs each failed first contact: it has tried while the store was down
        seen = ""
        while "failed (" not in seen:
            done, _ = await asyncio.wait([starting], timeout=0.05)
            if done:
                starting.result()  # raises why it could not start
            seen += capfd.readouterr().err
        await asyncio.to_thread(private_postgres.start)
        await asyncio.wait_for(starting, 60)
        assert channel.state.get("ready")
        await channel.close()

    asyncio.run(main())
