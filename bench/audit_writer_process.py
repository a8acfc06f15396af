"""What midway-audit's writer process spends per request, the whole of its path: the real
:class:`~midway_audit.handoff.writer_process.WriterProcess` in this process, fed through the
shared ring by a stand-in for the relay, as the relay feeds it — an intent and a record per
request (the bench's ~9 KB request, the upstream's answer), a wake-up per group of requests
(what one ``batch_linger`` carries), the last request of each group finishing in the next
one (its intent lingers past the group and is written; the others' never are).

    python bench/audit_writer_process.py [--requests 1200] [--group 12] [--workload json|stream]
                                         [--write-ahead true|false]

Run it under ``valgrind --tool=callgrind`` twice (two --requests values) for instructions per
request that the machine's load does not move; run plainly for CPU µs per request (user and
system: this process does the relay's small share too) and SQLite's bytes written.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import sys
import tempfile
from pathlib import Path

import orjson
from audit_writer import bodies, frame
from run import DELTAS
from upstream import render

from midway_audit.handoff.frames import CONFIG, INTENT, RECORD, WAKE
from midway_audit.handoff.frames import frame as socket_frame
from midway_audit.handoff.ring import HOT, RingReader, RingWriter, create
from midway_audit.handoff.writer_process import WriterProcess


def written() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("wchar"))


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="audit-writer-process-"))
    fd = create(4 * 1024 * 1024, HOT)
    ring, reader_ring = RingWriter(fd), RingReader(fd)
    ours, theirs = socket.socketpair()
    r_ours, w_ours = await asyncio.open_unix_connection(sock=ours, limit=1 << 20)
    r_theirs, w_theirs = await asyncio.open_unix_connection(sock=theirs, limit=1 << 20)
    process = WriterProcess(r_theirs, w_theirs, reader_ring)
    table = {"config": {"bodies": True, "store": f"sqlite:///{tmp}/audit.db",
                        "write_ahead": args.write_ahead == "true"},
             "data_dir": str(tmp), "log_level": 30, "instance": 12345}
    w_ours.writelines(socket_frame(CONFIG, orjson.dumps(table)))
    task = asyncio.create_task(process.run())
    status = orjson.loads(await r_ours.readline())
    assert status.get("ready"), status
    json_answer, events = render(DELTAS)
    answer = json_answer if args.workload == "json" else b"".join(events)
    body = bodies(args.workload, 0, 1)[0]
    total = args.warmup + args.requests
    metas = [frame(n, args.workload, body) for n in range(total)]
    ids = [orjson.loads(m)[0] for m in metas]
    intent = b'["%s",1.0,"anonymous",null,null,"anonymous","127.0.0.1",null,null,"POST",' \
             b'"/v1/messages","","claude-sonnet-4-6","anthropic",null]'

    async def committed(seq: int) -> None:
        while int(status.get("committed_seq", 0)) < seq:
            status.update(orjson.loads(await r_ours.readline()))

    t0 = s0 = w0 = 0.0
    late: int | None = None  # the request whose record comes with the next group
    for at in range(0, total, args.group):
        if at == args.warmup:
            t0, s0, w0 = (*_cpu(), written())
        for n in range(at, min(at + args.group, total)):
            if args.write_ahead == "true":
                assert ring.put(INTENT, intent % ids[n].encode(), ids[n].encode())
            if late is not None:
                assert ring.put(RECORD, metas[late], body, answer)
                late = None
            if n == at + args.group - 1:
                late = n
            else:
                assert ring.put(RECORD, metas[n], body, answer)
        w_ours.writelines(socket_frame(WAKE, b"", ring.written.to_bytes(8, "little")))
        await committed(at + args.group - 1)
        # the late request's intent outlives its linger: written, as in the relay's runs
        await asyncio.sleep(0.015)
    if late is not None:
        assert ring.put(RECORD, metas[late], body, answer)
    w_ours.writelines(socket_frame(WAKE, b"", ring.written.to_bytes(8, "little")))
    await committed(total)
    user, system = (b - a for a, b in zip((t0, s0), _cpu(), strict=True))
    print(f"{args.workload}, groups of {args.group}, write_ahead {args.write_ahead}: "
          f"CPU per request {user * 1e6 / args.requests:.1f} µs user + "
          f"{system * 1e6 / args.requests:.1f} µs system; "
          f"{(written() - w0) / args.requests:.0f} bytes written per request; "
          f"intents written {status.get('intents_done')}", file=sys.stderr)
    w_ours.write_eof()
    await task
    ring.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--warmup", type=int, default=240)
    parser.add_argument("--group", type=int, default=12)
    parser.add_argument("--workload", choices=("json", "stream"), default="json")
    parser.add_argument("--write-ahead", choices=("true", "false"), default="true")
    asyncio.run(main(parser.parse_args()))
