"""What one open slow stream holds in the relay's heap (docs/benchmarks.md, "Issue 24 target 5").

Starts the mock upstream and ``midway serve`` (audit and billing on, as ``bench/soak.py
--only slow_streams``; ``--bare``: no plugins) under a wrapper that turns ``tracemalloc`` on
after start-up, when told (SIGUSR2), and dumps a snapshot when told (SIGUSR1). Snapshots
idle and with N slow streams open, then prints the allocations still alive, per stream,
grouped by the line that made them (``--by traceback`` for whole tracebacks). Tracing slows
the relay several-fold: keep N to a few hundred.

    python bench/stream_heap.py [--streams 200] [--bare] [--by lineno|traceback|filename]
        [--top 40] [--keep DIR]; python bench/stream_heap.py --report DIR [--by ...] (again)
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import hardening_support
import soak

from midway.testing import wait_listening

SNAPSHOT_ENV = "MIDWAY_HEAP_SNAPSHOT"
OBJECTS_ENV = "MIDWAY_HEAP_OBJECTS"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def census() -> dict[str, Any]:
    """Without tracemalloc (whose own tables would swamp the allocators' figures): objects
    by type (gc-tracked ones and the untracked ones they refer to, e.g. str and bytes; count
    and ``sys.getsizeof``), pymalloc's arenas (``sys._debugmallocstats``, stderr) and
    glibc's ``mallinfo2`` (main arena and every thread's, summed; mmapped chunks apart)."""
    rss = hardening_support.rss_kib(os.getpid())  # before the census's own allocations
    info = _MallInfo2()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as text:  # what the two write to stderr, read back
        os.dup2(text.fileno(), 2)
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallinfo2.restype = _MallInfo2
            info = libc.mallinfo2()
            libc.malloc_stats()  # per arena
        except (OSError, AttributeError):
            pass
        sys._debugmallocstats()
        os.dup2(saved, 2)
        os.close(saved)
        text.seek(0)
        stats = text.read().decode()
    sys.stderr.write(stats)
    blocks = sys.getallocatedblocks()
    pymalloc = {match[1]: int(match[2].replace(",", "")) for match in re.finditer(
        r"# bytes in (allocated|available) blocks\s*=\s*([\d,]+)", stats)}
    unused = re.search(r"(\d+) unused pools \* (\d+) bytes", stats)
    pymalloc["unused pools"] = int(unused[1]) * int(unused[2]) if unused else 0
    counts: dict[str, list[int]] = {}
    owned: dict[str, list[int]] = {}  # "type in its first referrer's type"
    seen: set[int] = set()
    seen_owned: set[int] = set()
    for obj in gc.get_objects():
        owner = type(obj).__qualname__
        if owner == "coroutine":
            owner = f"coroutine {obj.__qualname__}"
        for one in (obj, *gc.get_referents(obj)):
            name = owner if one is obj else type(one).__qualname__
            if one is not obj and id(one) not in seen_owned:
                seen_owned.add(id(one))
                entry = owned.setdefault(f"{name} in {owner}", [0, 0])
                entry[0] += 1
                entry[1] += sys.getsizeof(one, 0)
            if id(one) in seen or (one is not obj and gc.is_tracked(one)):
                continue
            seen.add(id(one))
            entry = counts.setdefault(name, [0, 0])
            entry[0] += 1
            entry[1] += sys.getsizeof(one, 0)
    return {"types": counts, "owned": owned, "mallinfo": {name: getattr(info, name)
                                          for name, _ in _MallInfo2._fields_},
            "pymalloc_blocks": blocks, "pymalloc": pymalloc, "rss_kib": rss}


def serve_traced() -> None:
    """``midway`` with the two signal handlers (this script's ``--serve`` mode)."""
    out = os.environ[SNAPSHOT_ENV]
    dumped = [0]

    untraced = os.environ.get(OBJECTS_ENV) == "1"
    largest = [0]  # the most traced between the two dumps, snapshots' own tables left out

    def start(signum: int, frame: FrameType | None) -> None:
        gc.collect()
        if not untraced:
            tracemalloc.start(10)
        Path(f"{out}.started").touch()

    def dump(signum: int, frame: FrameType | None) -> None:
        gc.collect()
        if untraced:
            Path(f"{out}.{dumped[0]}.json").write_bytes(orjson.dumps(census()))
        else:
            # traced now, and the most since the last dump (taken first: a snapshot's own
            # tables are traced): what the streams' set-up held for a while beside what lasts
            current, peak = tracemalloc.get_traced_memory()
            Path(f"{out}.{dumped[0]}.peak").write_text(f"{current} {max(peak, largest[0])}")
            tracemalloc.take_snapshot().dump(f"{out}.{dumped[0]}")
            tracemalloc.reset_peak()
            if dumped[0] == 0:  # from here to the next dump, the heap at its largest too
                threading.Thread(target=watch_peak, daemon=True).start()
        Path(f"{out}.{dumped[0]}.done").touch()
        dumped[0] += 1

    def watch_peak() -> None:
        """Snapshot the heap each time it has grown by 5% over the last snapshot, until the
        streams are all open: the last one is near the peak (``{out}.peak``)."""
        snapped = tracemalloc.get_traced_memory()[0]
        while dumped[0] <= 1:  # (started by the first dump, before it counted itself)
            time.sleep(0.05)
            current, peak = tracemalloc.get_traced_memory()
            largest[0] = max(largest[0], peak)  # before a snapshot's own tables raise it
            if current > snapped * 1.05 and dumped[0] == 1:
                tracemalloc.take_snapshot().dump(f"{out}.peak")
                snapped = current
                tracemalloc.reset_peak()

    signal.signal(signal.SIGUSR2, start)
    signal.signal(signal.SIGUSR1, dump)
    from midway.cli import main

    sys.argv = ["midway", *sys.argv[2:]]
    main()


def wait_file(path: Path, timeout: float = 600) -> None:
    # (300 streams with the plugins on, on a loaded host: the snapshot was not done in 120 s)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path}")
        time.sleep(0.1)


def measure(n: int, bare: bool, by: str, top: int, keep: Path | None, objects: bool,
            at_head: float | None) -> None:
    config = soak.CONFIG.replace('plugins = ["audit", "billing"]', "plugins = []") \
        if bare else soak.CONFIG
    port = hardening_support.free_port()
    fake = subprocess.Popen([*hardening_support.MIDWAY, "mock-upstream", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = keep if keep is not None else Path(tempfile.mkdtemp(prefix="midway-heap-"))
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "snapshot"
    hardening_support.MIDWAY = [sys.executable, __file__, "--serve"]
    server = hardening_support.Server(tmp, config, f"http://127.0.0.1:{port}",
                                      env={SNAPSHOT_ENV: str(out),
                                           OBJECTS_ENV: "1" if objects else "0"}, name="heap")
    try:
        wait_listening(port, timeout=30)
        server.start()
        asyncio.run(soak.stream_requests(server.url, 50, 50, 0.0, soak.FAST, "warm-up"))
        os.kill(server.pid, signal.SIGUSR2)
        wait_file(Path(f"{out}.started"))
        # warmed up again under tracing: what the first streams allocate once is not counted
        asyncio.run(soak.stream_requests(server.url, 50, 50, 0.0, soak.FAST, "warm-up"))
        soak.idle(server)
        os.kill(server.pid, signal.SIGUSR1)
        wait_file(Path(f"{out}.0.done"))

        fake_url = f"http://127.0.0.1:{port}/_fake/requests"
        served = len(hardening_support.get_json(fake_url, 60))
        reply = soak.SLOW if at_head is None else orjson.dumps(
            {**orjson.loads(soak.SLOW), "first_byte_delay": at_head}).decode()

        async def all_in() -> bool:
            """All n open; with ``at_head``: all n sent upstream, none answered yet."""
            if at_head is None:
                health = await asyncio.to_thread(hardening_support.get_json,
                                                 server.url + "/healthz", 60)
                return bool(health["open_streams"] >= n)
            sent = await asyncio.to_thread(hardening_support.get_json, fake_url, 60)
            return len(sent) - served >= n

        async def run() -> None:
            task = asyncio.create_task(soak.stream_requests(server.url, n, n, 0.0, reply,
                                                            "slow"))
            while not task.done():
                if await all_in():
                    os.kill(server.pid, signal.SIGUSR1)
                    break
                await asyncio.sleep(0.05)
            await task

        asyncio.run(run())
        wait_file(Path(f"{out}.1.done"))
    finally:
        server.ensure_stopped()
        fake.terminate()
        fake.wait(10)
    what = "no plugins" if bare else "audit and billing"
    if objects:
        report_objects(out, n, what, top)
    else:
        report(out, n, what, by, top)


def report_objects(out: Path, n: int, what: str, top: int) -> None:
    before = orjson.loads(Path(f"{out}.0.json").read_bytes())
    during = orjson.loads(Path(f"{out}.1.json").read_bytes())
    print(f"RSS {(during['rss_kib'] - before['rss_kib']) * 1024 / n:.0f} bytes a stream "
          f"({what}, {n} open); pymalloc blocks "
          f"{(during['pymalloc_blocks'] - before['pymalloc_blocks']) / n:.1f} a stream")
    for name, value in during["pymalloc"].items():
        print(f"  pymalloc bytes in {name:9} {(value - before['pymalloc'][name]) / n:10.1f} "
              f"a stream ({value} in all)")
    for name, value in during["mallinfo"].items():
        print(f"  mallinfo {name:9} {(value - before['mallinfo'][name]) / n:10.1f} a stream "
              f"({value} in all)")
    for key, title in (("types", "objects by type"),
                       ("owned", "objects by type and their first referrer's")):
        types = {name: (count - before[key].get(name, (0, 0))[0],
                        size - before[key].get(name, (0, 0))[1])
                 for name, (count, size) in during[key].items()}
        print(f"{title} (sys.getsizeof): {sum(s for _, s in types.values()) / n:.0f} bytes, "
              f"{sum(c for c, _ in types.values()) / n:.1f} objects a stream")
        for name, (count, size) in sorted(types.items(), key=lambda t: -t[1][1])[:top]:
            print(f"{size / n:8.0f} B {count / n:6.2f}  {name}")


def report(out: Path, n: int, what: str, by: str, top: int) -> None:
    before = tracemalloc.Snapshot.load(f"{out}.0")
    during = tracemalloc.Snapshot.load(f"{out}.1")
    stats = during.compare_to(before, by)
    print(f"{sum(s.size_diff for s in stats) / n:.0f} bytes a stream alive with {n} open "
          f"({what})")
    idle = int(Path(f"{out}.0.peak").read_text().split()[0])
    peak = int(Path(f"{out}.1.peak").read_text().split()[1])
    print(f"{(peak - idle) / n:.0f} bytes a stream at the most, as they opened")
    for stat in stats[:top]:
        print(f"{stat.size_diff / n:8.0f} B {stat.count_diff / n:6.2f} objects")
        lines = stat.traceback.format() if by == "traceback" else [f"  {stat.traceback}"]
        print("\n".join(line for line in lines if not line.startswith("    ")))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_traced()
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--bare", action="store_true", help="plugins = []")
    parser.add_argument("--by", choices=("lineno", "traceback", "filename"), default="lineno")
    parser.add_argument("--top", type=int, default=40, help="print this many groups")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the snapshots in this folder (for --report)")
    parser.add_argument("--objects", action="store_true",
                        help="no tracing: objects by type, pymalloc's and glibc's figures")
    parser.add_argument("--at-head", type=float, default=None, metavar="SECONDS",
                        help="the upstream holds each answer's head this long: measured with "
                        "every request sent upstream and none answered (the set-up's share)")
    parser.add_argument("--report", type=Path, default=None,
                        help="no run: compare the snapshots a --keep run left in this folder")
    args = parser.parse_args()
    if args.report is not None:
        out = args.report / "snapshot"
        if args.objects:
            report_objects(out, args.streams, str(args.report), args.top)
        else:
            report(out, args.streams, str(args.report), args.by, args.top)
        return
    measure(args.streams, args.bare, args.by, args.top, args.keep, args.objects, args.at_head)


if __name__ == "__main__":
    main()
