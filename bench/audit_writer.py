"""What midway-audit's writer process spends per record, without a relay, wrk or an event loop
in the way: the bench's record frames (``bench/run.py``'s 16 KB-shaped request, the upstream's
answer) read, prepared (parse, parts, redaction, digests) and appended to a fresh SQLite store
in batches, as the writer process does after each wake-up.

    python bench/audit_writer.py [--records 3000] [--batch 10] [--workload json|stream]
                                 [--messages N] [--synchronous full|normal]
                                 [--without-part-refs]

Prints CPU µs per record (user + system, this process) for ``prepare`` and ``append``, and the
bytes SQLite wrote per record (``wchar`` of /proc/self/io: the WAL, its checkpoints, the
file). ``--messages N`` replaces the body's messages by N messages of ~1.2 KB each (each a
stored part, as in a long Claude Code conversation) and a new last turn per request: what
``audit_part_refs`` costs grows with the parts per body; ``--without-part-refs`` measures
append as if referring to a part already stored cost nothing (the measured records' parts
are left out of their rows after the warm-up stored them: an experiment, not a store anyone
could read back whole). CPU times move with the machine's load; the bytes written do not.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import orjson
from run import DELTAS, request_body
from upstream import render

from midway.options import load_table
from midway_audit.config import AuditConfig
from midway_audit.record import CAPTURED, prepare, received
from midway_audit.redact import Redactor
from midway_audit.stores.store import AuditStore

WARMUP = 500


def bodies(workload: str, messages: int, count: int) -> list[bytes]:
    body, _ = request_body(False)
    if workload == "stream":
        body = body.replace(b'"max_tokens":4096', b'"max_tokens":4096,"stream":true', 1)
    if not messages:
        return [body] * count
    parsed = orjson.loads(body)
    history = [{"role": ("user", "assistant")[i % 2],
                "content": f"message {i} " + "lorem ipsum dolor sit amet " * 45}
               for i in range(messages)]
    return [orjson.dumps({**parsed, "messages": [*history, {"role": "user",
                                                          "content": f"turn {n}"}]})
            for n in range(count)]


def frame(n: int, workload: str, body: bytes) -> bytes:
    headers = [("host", "127.0.0.1:8080"), ("content-type", "application/json"),
               ("anthropic-version", "2023-06-01"), ("content-length", str(len(body)))]
    fields = {"id": f"mw_{time.time_ns():x}{n:012x}",
              "upstream_request_id": f"req_011CBench{n:016d}", "ts": time.time(),
              "principal": "anonymous", "principal_name": None, "team": None,
              "principal_kind": "anonymous", "client_address": "127.0.0.1", "agent_id": None,
              "parent_agent_id": None, "method": "POST", "path": "/v1/messages", "query": "",
              "model": None, "response_model": "claude-sonnet-4-6", "upstream": "anthropic",
              "upstream_key": None,
              "attempts": [(1, "anthropic", 200, None, False, f"req_011CBench{n:016d}")],
              "status": 200, "stop_reason": "end_turn", "error": None, "error_type": None,
              "client_disconnected": False, "answered_by": "upstream",
              "streaming": workload == "stream", "ttfb_ms": 1.234567,
              "upstream_ttfb_ms": 1.1, "total_ms": 2.2,
              "usage": {"input_tokens": 250, "output_tokens": DELTAS * 2}, "annotations": {},
              "headers": headers, "response": workload, "stream_truncated": False,
              "audit_problem": None}
    return orjson.dumps([fields[k] for k in CAPTURED])


def written() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("wchar"))


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="audit-writer-"))
    config = load_table(AuditConfig, "audit", {
        "bodies": True, "store": f"sqlite:///{tmp}/audit.db",
        "sqlite_synchronous": args.synchronous}, env={}, data_dir=tmp)
    redactor = Redactor(config.redact_defaults, config.redact_patterns, config.redact_headers)
    store = AuditStore(config, inline=True)
    await store.open()
    total = WARMUP + args.records
    json_answer, events = render(DELTAS)
    answer = json_answer if args.workload == "json" else b"".join(events)
    frames = [(frame(n, args.workload, body), body)
              for n, body in enumerate(bodies(args.workload, args.messages, total))]
    limit = config.max_body_bytes
    prepared = appended = 0.0
    start_bytes = 0
    for at in range(0, total, args.batch):
        if at == WARMUP:
            start_bytes = written()
        t0 = time.process_time()
        rows = [prepare(received(meta, body, answer, limit), redactor, limit, True)
                for meta, body in frames[at:at + args.batch]]
        t1 = time.process_time()
        if args.without_part_refs and at >= WARMUP:
            for row in rows:
                row.parts = {}
        await store.append(rows)
        if at >= WARMUP:
            prepared += t1 - t0
            appended += time.process_time() - t1
    per = 1e6 / args.records
    refs = ", without part refs" if args.without_part_refs else ""
    print(f"{args.workload}, batches of {args.batch}, {args.messages or 'bench'} messages{refs}: "
          f"prepare {prepared * per:.1f} µs, append {appended * per:.1f} µs per record; "
          f"{(written() - start_bytes) / args.records:.0f} bytes written per record")
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--workload", choices=("json", "stream"), default="json")
    parser.add_argument("--messages", type=int, default=0)
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    parser.add_argument("--without-part-refs", action="store_true")
    asyncio.run(main(parser.parse_args()))
