"""``nox -s icount``: instructions per request, counted by callgrind — a relay's cost measured
the same whatever else the machine is doing.

CPU time per request (``bench/run.py``) moves by ±30 % from one run to the next on a shared
machine; an instruction count does not. Each target (the relay under test) runs under
``valgrind --tool=callgrind`` with instrumentation off while it starts and warms up, then on.
For every workload (JSON, a stream of 50 text deltas) and concurrency, a client sends N
requests, then N2, the counters zeroed before and dumped after each batch; the instructions
per request are ``(Ir(N2) - Ir(N)) / (N2 - N)``, so a batch's fixed costs (connections, the
control commands) cancel out. The upstream is ``bench/upstream.py`` (midway's fake Anthropic),
outside valgrind; the client runs in this process.

    python bench/icount.py [--baseline REF ...] [--only midway,plain] [--workloads json,stream]
                           [--concurrency 1,16] [--n 48] [--n2 144] [--keep DIR]
                           [--out icount-results.json]

Targets: ``plain`` (``bench/plain_proxy.py``), ``midway`` (no plugins, default settings),
``midway+chunk-unobserved`` (``bench/chunk_unobserved_plugin.py``: an ``on_chunk`` no exchange
opts into), ``alone-billing`` (midway-billing with one daily budget), ``alone-router`` (one
upstream, one key, one rule), ``alone-dashboard`` (its defaults), ``alone-audit`` (its
defaults; the relay only, not its writer process), ``stack`` (all four together: the relay
only, not audit's writer) — each as ``bench/variants_stack.py`` runs
it — and, with ``--baseline REF`` (repeatable), each of those again as of REF (``midway@REF``,
``stack@REF``, …: REF's core and plugins, built as ``bench/run.py`` builds them into a
virtualenv cached by commit; ``--only stack,stack@`` picks ``stack`` and ``stack`` at every
REF; the table gives each target's ratio to itself at the first REF). midway runs on its default
settings, as users run it: the access log on, written to the server's stderr (a file here).
``--keep DIR`` keeps the callgrind dumps (``callgrind_annotate DIR/<target>/callgrind.out.*``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httptools
import orjson
import tomli_w

from midway.testing import free_port, wait_listening

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import DELTAS, _substitute, baseline_midway, request_body  # noqa: E402
from variants_stack import BUDGET, ROUTER  # noqa: E402

BILLING_CONFIG = tomli_w.dumps({"billing": {"budgets": BUDGET}})  # bench/run.py's budget
WARMUP = 32  # requests per workload before counting: pools, caches, lazy imports


class _Client(asyncio.Protocol):
    """One keep-alive connection sending requests one after the other."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.done is not None
        self.done.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("the relay closed the connection"))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.body = []
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.done


def http_request(port: int, body: bytes) -> bytes:
    return (b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
            b"content-type: application/json\r\nx-api-key: sk-ant-bench\r\n"
            b"anthropic-version: 2023-06-01\r\ncontent-length: %d\r\n\r\n%s"
            % (port, len(body), body))


async def _load(port: int, request: bytes, stream: bool, count: int, concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    clients = [(await loop.create_connection(_Client, "127.0.0.1", port))[1]
               for _ in range(concurrency)]
    shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]

    async def run(client: _Client, share: int) -> None:
        for _ in range(share):
            status, body = await client.send(request)
            if status != 200 or (stream and b"event: message_stop" not in body):
                raise RuntimeError(f"the relay answered {status}: {body[:300]!r}")

    try:
        await asyncio.gather(*(run(c, s) for c, s in zip(clients, shares, strict=True)))
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.close()


def load(port: int, request: bytes, stream: bool, count: int, concurrency: int) -> None:
    asyncio.run(_load(port, request, stream, count, concurrency))


def requests(port: int) -> dict[str, tuple[bytes, bool]]:
    body = request_body(False)[0]
    stream = body.replace(b'"max_tokens":4096', b'"max_tokens":4096,"stream":true', 1)
    return {"json": (http_request(port, body), False), "stream": (http_request(port, stream), True)}


class Callgrind:
    """A server under callgrind, instrumentation off until ``instrument()``."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], out: Path) -> None:
        self.name, self.out = name, out
        self.port = free_port()
        out.mkdir(parents=True, exist_ok=True)
        self.stderr = (out / "stderr.log").open("wb")
        cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out / 'callgrind.out'}", *cmd],
            # one hash seed: the same dict and set layouts, run after run
            env={**os.environ, "PYTHONHASHSEED": "0", **env},
            stdout=subprocess.DEVNULL, stderr=self.stderr, cwd=out)
        try:
            wait_listening(self.port, timeout=240)
        except Exception:
            self.stop()
            raise RuntimeError(f"{name} did not listen under valgrind; see {out}/stderr.log"
                               ) from None

    def control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def instrument(self) -> None:
        self.control("--instr=on")

    def count(self, label: str, action: Any, *args: Any) -> int:
        """Instructions the server executed while ``action(*args)`` ran."""
        before = set(self.out.glob("callgrind.out.*"))
        self.control("--zero")
        action(*args)
        self.control(f"--dump={label}")
        for _ in range(600):
            new = set(self.out.glob("callgrind.out.*")) - before
            if new:
                break
            time.sleep(0.1)
        (path,) = new
        for _ in range(600):  # the dump is written by the server: wait for its totals
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(("totals:", "summary:")):
                    return int(line.split()[1])
            time.sleep(0.1)
        raise RuntimeError(f"no totals in {path}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def midway_cmd(executable: str, upstream: str, data_dir: Path,
               plugin: Path | None = None, plugins: str = "", config_text: str = ""
               ) -> tuple[list[str], dict[str, str]]:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "midway.toml"
    config.write_text(config_text)  # else the defaults, as users run it (access log on)
    cmd = [executable, "serve", "--port", "{port}", "--upstream", upstream, "--config",
           str(config), "--data-dir", str(data_dir), "--workers", "1"]
    if plugin is not None:
        cmd += ["--plugin", str(plugin)]
    # no MIDWAY_LOG_LEVEL: at WARNING the access log would be off
    return cmd, {"MIDWAY_PLUGINS": plugins}


def relay_targets(midway: str, upstream: str, work: Path, suffix: str = ""
                  ) -> list[tuple[str, list[str], dict[str, str]]]:
    """Every target but plain, run by the ``midway`` executable given (this tree's, or a
    baseline's: ``suffix`` ``@REF``), each with a data directory of its own."""
    def target(name: str, plugin: Path | None = None, plugins: str = "",
               config_text: str = "") -> tuple[str, list[str], dict[str, str]]:
        full = name + suffix
        return (full, *midway_cmd(midway, upstream, work / full.replace("/", "_") / "data",
                                  plugin, plugins, config_text))

    router = tomli_w.dumps({"router": _substitute(ROUTER, upstream, work)})
    return [
        target("midway"),
        target("midway+chunk-unobserved", HERE / "chunk_unobserved_plugin.py"),
        # bench/variants_stack.py's alone-billing-*: one daily budget, the SQLite ledger
        target("alone-billing", plugins="billing", config_text=BILLING_CONFIG),
        target("alone-router", plugins="router", config_text=router),
        target("alone-dashboard", plugins="dashboard"),
        # audit on its defaults (bodies, write-ahead intents, SQLite): the relay's share only
        # (its writer process is not run under valgrind)
        target("alone-audit", plugins="audit"),
        # bench/variants_stack.py's stack-*: audit, billing, router and dashboard together, as
        # above; the relay only (audit's writer process is not run under valgrind)
        target("stack", plugins="audit,billing,router,dashboard",
               config_text=BILLING_CONFIG + "\n" + router),
    ]


def measure(target: Callgrind, workloads: list[str], concurrencies: list[int], n: int, n2: int
            ) -> list[dict[str, Any]]:
    reqs = requests(target.port)
    for workload in workloads:
        request, stream = reqs[workload]
        load(target.port, request, stream, WARMUP, max(concurrencies))
    target.instrument()
    rows = []
    for workload in workloads:
        request, stream = reqs[workload]
        for c in concurrencies:
            ir = {}
            for count in (n, n2):
                ir[count] = target.count(f"{workload}-c{c}-n{count}", load, target.port,
                                         request, stream, count, c)
            per_request = (ir[n2] - ir[n]) / (n2 - n)
            row = {"target": target.name, "workload": workload, "concurrency": c,
                   "n": n, "n2": n2, "ir_n": ir[n], "ir_n2": ir[n2],
                   "ir_per_request": per_request}
            print(f"{target.name:28} {workload:6} c={c:<3} "
                  f"{per_request / 1e6:8.3f} M instructions/request", flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", action="append", default=[],
                        help="also midway as of this git ref (repeatable; the first is the base)")
    parser.add_argument("--only", help="comma-separated targets")
    parser.add_argument("--workloads", default="json,stream")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--n2", type=int, default=144)
    parser.add_argument("--keep", type=Path, help="keep the callgrind dumps here")
    parser.add_argument("--out", type=Path, default=Path("icount-results.json"))
    args = parser.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("icount needs valgrind (apt-get install valgrind)")
    if args.n2 <= args.n:
        sys.exit("--n2 must be larger than --n")
    workloads = args.workloads.split(",")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    work = args.keep or Path(tempfile.mkdtemp(prefix="midway-icount-"))
    work.mkdir(parents=True, exist_ok=True)

    upstream_port = free_port()
    upstream_proc = subprocess.Popen([sys.executable, str(HERE / "upstream.py"),
                                      str(upstream_port), str(DELTAS)])
    upstream = f"http://127.0.0.1:{upstream_port}"
    midway = str(Path(sys.executable).with_name("midway"))
    targets = [("plain", [sys.executable, str(HERE / "plain_proxy.py"), "{port}", upstream],
                {}), *relay_targets(midway, upstream, work)]
    for ref in args.baseline:
        targets += relay_targets(str(baseline_midway(ref)), upstream, work, f"@{ref}")
    if args.only:
        wanted = set(args.only.split(","))
        targets = [t for t in targets if t[0] in wanted or
                   ("@" in t[0] and t[0].split("@", 1)[0] + "@" in wanted)]
    rows: list[dict[str, Any]] = []
    try:
        wait_listening(upstream_port)
        for name, cmd, env in targets:
            target = Callgrind(name, cmd, env, work / name.replace("/", "_"))
            try:
                rows += measure(target, workloads, concurrencies, args.n, args.n2)
            finally:
                target.stop()
    finally:
        upstream_proc.terminate()
        upstream_proc.wait()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    report(rows)


def report(rows: list[dict[str, Any]]) -> None:
    """Instructions per request, and each target's ratio to plain and to itself at the first
    baseline (``stack`` to ``stack@REF``)."""
    by = {(r["target"], r["workload"], r["concurrency"]): r["ir_per_request"] for r in rows}
    names = list(dict.fromkeys(r["target"] for r in rows))
    cols = list(dict.fromkeys((r["workload"], r["concurrency"]) for r in rows))
    ref = next((n.split("@", 1)[1] for n in names if "@" in n), None)
    print("\nM instructions per request (ratio to plain; to the same target at the baseline)")
    print("| target | " + " | ".join(f"{w} c={c}" for w, c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in names:
        base = f"{name}@{ref}" if ref is not None and "@" not in name else None
        cells = []
        for w, c in cols:
            value = by.get((name, w, c))
            if value is None:
                cells.append("")
                continue
            cell = f"{value / 1e6:.3f}"
            ratios = [f"{value / by[(other, w, c)]:.2f}× {label}" for other, label in
                      (("plain", "plain"), (base, "base")) if other and other != name and
                      by.get((other, w, c))]
            cells.append(cell + (f" ({', '.join(ratios)})" if ratios else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
