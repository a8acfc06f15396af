"""Bounded memory per request whatever an answer's framing (#18 items 4 and 5), measured on a
real ``midway serve`` with audit and billing loaded.

A 256 MiB JSON answer without a length (chunked) used to be buffered whole: 300 MB took the
relay to 1.29 GB and the audit writer to 1.16 GB. Now the relay buffers JSON only up to
``BUFFER_LIMIT`` (32 MiB) and relays the rest as it comes, reading usage on the way; audit gets
the start of the answer (up to 4 × ``max_body_bytes``), marked truncated. The test reads the
peak resident memory (``VmHWM``) of the relay and of every process it started, and the
ledger row that prices the answer.
"""

from __future__ import annotations

import http.client
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hardening_support import MSG, Server, descendants, ledger_rows

from midway.testing import RawReply, RawUpstream, wait_for

MiB = 1024 * 1024
ANSWER = 256 * MiB
GROWTH_LIMIT = 150 * MiB
CONFIG = """
[midway]
plugins = ["audit", "billing"]
[audit]
sqlite_synchronous = "normal"
"""
USAGE = {"input_tokens": 1000, "output_tokens": 64000}


def memory(pid: int) -> tuple[int, int]:
    """(resident, peak resident) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def huge_message() -> Iterator[bytes]:
    """A message whose text is ``ANSWER`` bytes, written a MiB at a time, usage last."""
    yield b'{"id":"msg_big","type":"message","role":"assistant","model":"claude-sonnet-4-6",' \
          b'"content":[{"type":"text","text":"'
    piece = (b"All work and no play. " * (MiB // 22 + 1))[:MiB]
    for _ in range(ANSWER // len(piece)):
        yield piece
    yield b'"}],"stop_reason":"end_turn","stop_sequence":null,"usage":' + orjson.dumps(USAGE) \
        + b"}"


@pytest.fixture
def raw() -> Iterator[RawUpstream]:
    server = RawUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def server(tmp_path: Path, raw: RawUpstream) -> Iterator[Server]:
    running = Server(tmp_path, CONFIG, raw.url)
    try:
        yield running.start()
    finally:
        running.ensure_stopped()


def ask(server: Server) -> tuple[int, int, str]:
    """POST a message and read the answer to its end a MiB at a time: status, size read,
    midway's request id."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        conn.request("POST", "/v1/messages", orjson.dumps(MSG),
                     {"x-api-key": "sk-ant-memory", "content-type": "application/json"})
        resp = conn.getresponse()
        size = 0
        while chunk := resp.read(MiB):
            size += len(chunk)
        return resp.status, size, resp.getheader("x-midway-request-id") or ""
    finally:
        conn.close()


def test_chunked_json_of_256_mib_keeps_memory_bounded_and_is_priced(
        server: Server, raw: RawUpstream) -> None:
    # warm up: plugins, pools and the writer process have done one request each
    raw.reply(RawReply(body=[b'{"type":"message","usage":{"input_tokens":1}}'],
                       framing="chunked"))
    assert ask(server)[0] == 200
    processes = [server.pid, *descendants(server.pid)]
    assert len(processes) >= 2, "the audit writer process should run beside the relay"
    before = {pid: memory(pid)[0] for pid in processes}

    raw.reply(RawReply(body=huge_message(), framing="chunked"))
    status, size, request_id = ask(server)
    assert status == 200 and size > ANSWER

    rows: list[dict[str, object]] = []

    def settled() -> bool:
        rows[:] = [r for r in ledger_rows(server.data_dir) if r["exchange_id"] == request_id]
        return bool(rows) and rows[0]["state"] == "settled"

    wait_for(settled, timeout=60)
    assert rows[0]["output_tokens"] == USAGE["output_tokens"]
    assert int(str(rows[0]["cost_pusd"])) > 0  # priced, not $0
    with sqlite3.connect(server.data_dir / "audit.db") as con:
        wait_for(lambda: con.execute("SELECT count(*) FROM audit_records WHERE request_id = ?",
                                     (request_id,)).fetchone()[0] == 1, timeout=60)
        data = orjson.loads(con.execute("SELECT data FROM audit_records WHERE request_id = ?",
                                        (request_id,)).fetchone()[0])
    assert data["response_truncated"] is True and data["error"] is None

    growth = {pid: memory(pid)[1] - before[pid] for pid in processes}
    print("peak RSS growth (MiB):", {pid: round(g / MiB, 1) for pid, g in growth.items()})
    for pid, grown in growth.items():
        assert grown < GROWTH_LIMIT, f"process {pid} grew by {grown / MiB:.0f} MiB"
