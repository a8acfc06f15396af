"""``nox -s bench``: throughput, latency, CPU per request and memory, all in one run.

Targets: the upstream directly, a plain 40-line aiohttp pass-through, midway without plugins,
midway with a no-op plugin on every hook, and each variant of bench/variants_*.py. The proxy
under test is pinned to CPU 0 (its helper processes, such as midway-audit's writer, are not);
the upstream and the load generator (wrk) to CPU 1. CPU time per request is read from /proc
for the proxy's processes; memory as the high-water RSS of each process, summed (``rss``), and
as the highest proportional set size of the processes together sampled during the load
(``pss``: memory the relay and its helpers share counts once). These machines are shared and
noisy: all targets of a workload run at once and are loaded in turn, round after round, and
each figure is the median of its rounds; ratios compare targets measured in the same rounds.

    python bench/run.py [--duration 3] [--rounds 3] [--only midway,plain]
                        [--concurrency 1,16,64] [--workloads json,stream]
                        [--baseline REF] [--workers-scaling] [--out results.json]

``--baseline REF`` adds ``midway@REF``: midway as of a git ref (a commit, a branch, ``main``),
its core and plugins built once into a cached virtualenv, measured beside ``midway`` in the
same rounds; and each variant as of REF (``NAME@REF``, picked with ``--only`` like the others).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from midway.testing import free_port, wait_listening

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")
DELTAS = 50


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    if cpu is None or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        pids.extend(process_tree(int(child)))
    return pids


def cpu_seconds(pid: int, tree: bool = True) -> float:
    total = 0.0
    for p in process_tree(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK  # utime + stime
    return total


def memory_kb(pid: int, field: str) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def pss_kb(pid: int) -> int:
    """The process tree's proportional set size: a page shared by N of its processes (the
    audit ring the relay and its writer map, the interpreter's libraries) counts 1/N in each,
    so the sum counts it once — where summed RSS counts it once per process."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


class PeakPss:
    """Samples :func:`pss_kb` every ``interval`` seconds in a thread while a load runs."""

    def __init__(self, pid: int | None, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        assert self.pid is not None
        while True:
            self.peak = max(self.peak, pss_kb(self.pid))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakPss:
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, pss_kb(self.pid))


# The "paraphrase-*" workloads: the cache is primed with PRIME, then every request asks the same
# thing in other words (PARAPHRASE), so each is a semantic hit (semantic hits are not stored).
PRIME = "How do I reverse a list in Python?"
PARAPHRASE = "How can I reverse a list in Python?"


def request_body(unique: bool, last_turn: str = "Thanks, go on.") -> tuple[bytes, bytes]:
    """A Claude-Code-shaped body (~9 KB): system blocks, tools, a few turns."""
    system = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197"},
              {"type": "text", "text": "You are a helpful coding agent. " * 120,
               "cache_control": {"type": "ephemeral"}}]
    tools = [{"name": f"Tool{i}", "description": "Does a thing. " * 20,
              "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}}}
             for i in range(12)]
    messages = [{"role": "user", "content": "Please look at the repository and fix the bug."},
                {"role": "assistant", "content": "Looking at it now."},
                {"role": "user", "content": "MARKER"}]
    body = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 4096, "system": system,
                         "tools": tools, "messages": messages})
    head, tail = body.split(b"MARKER")
    if not unique:
        return body.replace(b"MARKER", last_turn.encode()), b""
    return head, tail


LUA = """
local head = [==[%(head)s]==]
local tail = [==[%(tail)s]==]
local unique = %(unique)s
local counter = 0
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["x-api-key"] = "sk-ant-bench"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.path = "/v1/messages"
if not unique then wrk.body = head end
function setup(thread) thread:set("tid", tostring(math.random(1, 1000000000))) end
-- Only a body that changes needs a Lua call per request; wrk sends a fixed one as it is.
if unique then
  function request()
    counter = counter + 1
    return wrk.format(nil, nil, nil, head .. tid .. "-" .. counter .. tail)
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests":%%d,"non2xx":%%d,"errors":%%d,"p50":%%d,' ..
    '"p99":%%d,"duration":%%d}\\n', summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99),
    summary.duration))
end
"""


def wrk_script(workload: str, tmp: Path) -> Path:
    unique = workload.startswith("unique")
    stream = workload.endswith("stream")
    head, tail = request_body(unique, PARAPHRASE if workload.startswith("paraphrase")
                              else "Thanks, go on.")
    if stream:
        head = head.replace(b'"max_tokens":4096', b'"max_tokens":4096,"stream":true', 1)
    path = tmp / f"{workload}.lua"
    path.write_text(LUA % {"head": head.decode(), "tail": tail.decode(),
                           "unique": "true" if unique else "false"})
    return path


def run_wrk(port: int, script: Path, concurrency: int, duration: float) -> dict[str, Any]:
    seconds = max(1, round(duration))
    cmd = pinned(1, ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s",
                     "-s", str(script), f"http://127.0.0.1:{port}"])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return dict(orjson.loads(line[7:]))


class Target:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
                 cpu: int | None = 0, proxy: bool = True) -> None:
        self.name, self.cmd, self.env, self.cpu, self.proxy = name, cmd, env or {}, cpu, proxy
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.workloads: list[str] | None = None  # a variant's own (else --workloads)
        self.workers = 1  # serving processes (midway --workers)

    def start(self) -> None:
        cmd = [c.replace("{port}", str(self.port)) for c in self.cmd]
        # stderr to a file: a pipe nobody reads would stall a server that logs a lot.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)
        self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env},
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        wait_listening(self.port)
        time.sleep(0.3)  # let a multi-worker server bind every worker before measuring
        # Pin the relay (every thread of the serving process) once it listens; helper
        # processes it started (midway-audit's writer) keep the machine's other cores.
        if self.cpu is not None and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
            subprocess.run(["taskset", "-a", "-p", "-c", str(self.cpu), str(self.proc.pid)],
                           check=True, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def load_variants(upstream: str, data_dir: Path) -> list[dict[str, Any]]:
    variants: list[dict[str, Any]] = []
    for path in sorted(HERE.glob("variants_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for variant in getattr(module, "VARIANTS", []):
            variants.append(_substitute(variant, upstream, data_dir / variant["name"]))
    return variants


def _substitute(value: Any, upstream: str, data_dir: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{upstream}", upstream).replace("{data_dir}", str(data_dir))
    if isinstance(value, dict):
        return {k: _substitute(v, upstream, data_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, upstream, data_dir) for v in value]
    return value


def midway_target(name: str, upstream: str, data_dir: Path, plugins: list[str],
                  config: dict[str, Any] | None = None, extra: list[str] | None = None,
                  workers: int = 1, cpu: int | None = 0) -> Target:
    import tomli_w

    data_dir.mkdir(parents=True, exist_ok=True)
    # midway's defaults, as users run it (the access log on, written to the server's stderr)
    config = dict(config or {})
    config_path = data_dir / "midway.toml"
    config_path.write_bytes(tomli_w.dumps(config).encode())
    cmd = ["midway", "serve", "--port", "{port}", "--upstream", upstream, "--config",
           str(config_path), "--data-dir", str(data_dir), "--workers", str(workers)]
    for plugin in extra or []:
        cmd += ["--plugin", plugin]
    env = {"MIDWAY_PLUGINS": ",".join(plugins)}  # no MIDWAY_LOG_LEVEL: WARNING silences it
    target = Target(name, cmd, env, cpu=cpu)
    target.workers = workers
    return target


def baseline_midway(ref: str) -> Path:
    """The ``midway`` executable as of git ``ref``: the core and every plugin exported from this
    repository and installed, with their dependencies, into a virtualenv cached by commit
    (``$XDG_CACHE_HOME/midway-bench``; deleting it rebuilds it)."""
    root = HERE.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify",
                                 f"{ref}^{{commit}}"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except subprocess.CalledProcessError:
        sys.exit(f"--baseline {ref}: not a commit of this repository")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "midway-bench"
    home = cache / f"baseline-full-{commit[:12]}"
    executable = home / "venv" / "bin" / "midway"
    if (home / "ready").exists():
        return executable
    shutil.rmtree(home, ignore_errors=True)
    (home / "src").mkdir(parents=True)
    print(f"building midway@{ref} ({commit[:12]}) into {home} ...", flush=True)
    archive = subprocess.run(["git", "-C", str(root), "archive", commit, "core", "plugins"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(home / "src")], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True)
    plugins = sorted(str(p) for p in (home / "src" / "plugins").iterdir()
                     if (p / "pyproject.toml").exists())
    subprocess.run([str(home / "venv" / "bin" / "python"), "-m", "pip", "install", "-q",
                    str(home / "src" / "core"), *plugins], check=True)
    (home / "ready").write_text(f"{ref} {commit}\n")
    return executable


def prime(port: int) -> None:
    """Store PRIME's answer: post it until the cache says it is a hit (or there is no cache)."""
    import urllib.request

    body = request_body(False, PRIME)[0]
    for _ in range(100):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/messages", data=body, method="POST",
            # The same headers as wrk's requests: anthropic-version is part of the cache key.
            headers={"x-api-key": "sk-ant-bench", "content-type": "application/json",
                     "anthropic-version": "2023-06-01"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            resp.read()
            outcome = resp.headers.get("x-midway-cache")
        if outcome is None or outcome == "hit":
            return
        time.sleep(0.05)  # the answer is stored after it was sent
    raise RuntimeError("the cache never stored the priming answer")


def measure_group(targets: list[Target], workload: str, concurrencies: list[int],
                  duration: float, rounds: int, tmp: Path, upstream_pid: int
                  ) -> list[dict[str, Any]]:
    """Measure every target on one workload, interleaved: all of them run at once (idle but
    for the one under load), and each round loads each in turn, so that the machine's
    drifts hit all alike. A figure is the median of its rounds. Each sample also reads the
    load side's CPU per request (the upstream, ``upstream_pid``, and wrk)."""
    script = wrk_script(workload, tmp)
    started: list[Target] = []
    try:
        for target in targets:
            if target.proxy:
                target.start()
                started.append(target)
        idle = {t.name: memory_kb(t.proc.pid, "VmRSS") / 1024 for t in started
                if t.proc is not None}
        for target in targets:
            if workload.startswith("paraphrase") and target.proxy:
                prime(target.port)
            run_wrk(target.port, script, 8, 1.0)  # warm-up: pools, caches, lazy imports
        rows = []
        for concurrency in concurrencies:
            samples: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            for _ in range(rounds):
                for target in targets:
                    samples[target.name].append(_sample(target, script, concurrency,
                                                        duration, upstream_pid))
            for target in targets:
                got = samples[target.name]
                row = {"target": target.name, "workload": workload,
                       "concurrency": concurrency, "rounds": len(got),
                       "errors": sum(g["errors"] for g in got),
                       "idle_rss_mb": idle.get(target.name, 0.0),
                       "peak_rss_mb": memory_kb(target.proc.pid, "VmHWM") / 1024
                       if target.proxy and target.proc is not None else 0.0}
                row["peak_pss_mb"] = max(g["pss_mb"] for g in got)
                for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req",
                            "relay_cpu_us_per_req", "load_cpu_us_per_req"):
                    values = [g[key] for g in got if g[key] is not None]
                    row[key] = statistics.median(values) if values else None
                row["rps_rounds"] = [round(g["rps"]) for g in got]
                rows.append(row)
                print(_fmt(row), flush=True)
    finally:
        for target in started:
            target.stop()
    return rows


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk's, once it has been reaped
    return usage.ru_utime + usage.ru_stime


def _sample(target: Target, script: Path, concurrency: int, duration: float,
            upstream_pid: int) -> dict[str, Any]:
    pid = target.proc.pid if target.proxy and target.proc is not None else None
    # With --workers N the serving process is the supervisor: its workers are the relays.
    relay = pid if pid and target.workers == 1 else None
    cpu0 = cpu_seconds(pid) if pid else 0.0
    relay0 = cpu_seconds(relay, tree=False) if relay else 0.0
    load0 = cpu_seconds(upstream_pid, tree=False) + _children_cpu()
    with PeakPss(pid) as pss:
        result = run_wrk(target.port, script, concurrency, duration)
    n = max(1, result["requests"])
    load = cpu_seconds(upstream_pid, tree=False) + _children_cpu() - load0
    return {"rps": result["requests"] / (result["duration"] / 1e6),
            "p50_ms": result["p50"] / 1000, "p99_ms": result["p99"] / 1000,
            "cpu_us_per_req": (cpu_seconds(pid) - cpu0) / n * 1e6 if pid else None,
            # the serving process alone (without helper processes such as audit's writer;
            # the same as cpu_us_per_req for everything else)
            "relay_cpu_us_per_req":
                (cpu_seconds(relay, tree=False) - relay0) / n * 1e6 if relay else None,
            # the upstream's and wrk's: what the proxy's cores are shared with when unpinned
            "load_cpu_us_per_req": load / n * 1e6,
            "pss_mb": pss.peak / 1024,
            "errors": result["errors"] + result["non2xx"]}


def _fmt(row: dict[str, Any]) -> str:
    cpu = f"{row['cpu_us_per_req']:7.0f}" if row["cpu_us_per_req"] is not None else "      -"
    relay = row.get("relay_cpu_us_per_req")
    helpers = ""
    if relay is not None and row["cpu_us_per_req"] - relay >= 1:
        helpers = f" (relay {relay:.0f} + helper processes {row['cpu_us_per_req'] - relay:.0f})"
    return (f"{row['target']:<22} {row['workload']:<13} c={row['concurrency']:<3} "
            f"{row['rps']:8.0f} req/s  p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:7.2f} ms"
            f"  cpu/req {cpu} us{helpers}  rss {row['peak_rss_mb']:5.1f} MB  "
            f"pss {row['peak_pss_mb']:5.1f} MB  "
            f"err {row['errors']}")


def scaling_ceiling(one: dict[str, Any], two: dict[str, Any]) -> str:
    """What ``--workers 2`` can show on this host. One worker has a core to itself (CPU 0);
    two share every core with the upstream and wrk, so they serve at most ``cores / (proxy
    + load side)`` requests a second (CPU per request each). The measured ratio is a lower
    bound of what two cores to the proxy alone would give; the ceiling, what this host
    could show at best."""
    cores = os.cpu_count() or 1
    measured = two["rps"] / one["rps"]
    load = two["load_cpu_us_per_req"]
    ceiling = cores / ((two["cpu_us_per_req"] + load) / 1e6)
    return (f"\nWorkers (JSON c=64; 1 worker on CPU 0, 2 workers on {cores} cores shared with the "
            f"upstream and wrk): "
            f"2 workers {two['rps']:.0f} req/s = x{measured:.2f} of 1 worker "
            f"({one['rps']:.0f} req/s). The load side spent {load:.0f} us a request beside "
            f"the proxy's {two['cpu_us_per_req']:.0f}: {cores} cores serve at most "
            f"{ceiling:.0f} req/s = x{ceiling / one['rps']:.2f} of 1 worker here.")


def report(rows: list[dict[str, Any]], baseline: str | None = None) -> None:
    print("\nRatios (CPU per request vs the plain aiohttp pass-through; added p50 vs direct):")
    index = {(r["target"], r["workload"], r["concurrency"]): r for r in rows}
    for r in rows:
        if r["target"] in ("direct", "plain"):
            continue
        plain = index.get(("plain", r["workload"], r["concurrency"]))
        direct = index.get(("direct", r["workload"], r["concurrency"]))
        base = index.get(("midway", r["workload"], r["concurrency"]))
        before = index.get((baseline, r["workload"], r["concurrency"])) if baseline else None
        parts = [f"{r['target']:<22} {r['workload']:<13} c={r['concurrency']:<3}"]
        if plain and plain["cpu_us_per_req"] and r["cpu_us_per_req"]:
            parts.append(f"cpu x{r['cpu_us_per_req'] / plain['cpu_us_per_req']:.2f} of plain")
        if base and base is not r and base["cpu_us_per_req"] and r["cpu_us_per_req"]:
            parts.append(f"cpu x{r['cpu_us_per_req'] / base['cpu_us_per_req']:.2f} of midway")
            relay = r.get("relay_cpu_us_per_req")
            if relay is not None and r["cpu_us_per_req"] - relay >= 1:
                parts.append(f"relay cpu x{relay / base['cpu_us_per_req']:.2f} of midway")
            parts.append(f"rps x{r['rps'] / base['rps']:.2f} of midway")
        if before and before is not r and before["cpu_us_per_req"] and r["cpu_us_per_req"]:
            parts.append(f"cpu x{r['cpu_us_per_req'] / before['cpu_us_per_req']:.2f} "
                         f"of {baseline}")
        if direct:
            parts.append(f"+{r['p50_ms'] - direct['p50_ms']:.2f} ms p50 vs direct")
        print("  ".join(parts))
    idle = {r["target"]: r["idle_rss_mb"] for r in rows}
    print("\nIdle RSS (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in idle.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds per figure (their median is reported)")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--workloads", default="json,stream")
    parser.add_argument("--only", default="", help="comma-separated target names")
    parser.add_argument("--baseline", metavar="REF",
                        help="also measure midway as of this git ref (midway@REF)")
    parser.add_argument("--workers-scaling", action="store_true",
                        help="also measure midway with 1 vs 2 workers")
    parser.add_argument("--out", default="bench-results.json")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is required: apt-get install wrk")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    workloads = args.workloads.split(",")
    only = set(filter(None, args.only.split(",")))
    tmp = Path(tempfile.mkdtemp(prefix="midway-bench-"))
    up_port = free_port()
    upstream_proc = subprocess.Popen(pinned(1, [sys.executable, str(HERE / "upstream.py"),
                                                str(up_port), str(DELTAS)]))
    wait_listening(up_port)
    upstream = f"http://127.0.0.1:{up_port}"
    try:
        targets = [
            Target("direct", ["true"], proxy=False),
            Target("plain", [sys.executable, str(HERE / "plain_proxy.py"), "{port}", upstream]),
            midway_target("midway", upstream, tmp / "midway", []),
            midway_target("midway+noop", upstream, tmp / "noop", [],
                          extra=[str(HERE / "noop_plugin.py")]),
        ]
        targets[0].port = up_port
        baseline = None
        if args.baseline:
            baseline = f"midway@{args.baseline}"
            old = midway_target(baseline, upstream, tmp / "baseline", [])
            old.cmd[0] = str(baseline_midway(args.baseline))
            targets.insert(3, old)
        fixed = 4 if baseline else 3  # direct, plain, midway (and midway@REF): in every group
        for variant in load_variants(upstream, tmp):
            names = [variant["name"]] + ([f"{variant['name']}@{args.baseline}"]
                                         if args.baseline else [])
            for name in names:  # a variant as of REF too: its plugins and core both
                targets.append(midway_target(name, upstream, tmp / name.replace("@", "-at-"),
                                             variant.get("plugins", []), variant.get("config"),
                                             extra=variant.get("extra")))
                targets[-1].workloads = (variant.get("workloads") or
                                         [variant.get("workload", "json")])
                if "@" in name:
                    targets[-1].cmd[0] = str(baseline_midway(args.baseline))
        chosen = [t for t in targets if not only or t.name in only]
        # Each workload: the targets that measure it (the fixed ones measure --workloads, a
        # variant its own, with direct, plain and midway beside it to compare with).
        groups: dict[str, list[Target]] = {}
        for target in chosen:
            for workload in target.workloads or workloads:
                groups.setdefault(workload, []).append(target)
        rows: list[dict[str, Any]] = []
        for workload, group in groups.items():
            in_group = {t.name for t in group}
            refs = [t for t in targets[:fixed] if t.name not in in_group]
            rows += measure_group([*refs, *group], workload, concurrencies, args.duration,
                                  args.rounds, tmp, upstream_proc.pid)
        if args.workers_scaling:
            # Interleaved, in the same rounds. One worker pinned to CPU 0 as every target
            # (the upstream and wrk on CPU 1); two unpinned: the second worker needs a core
            # too, and on a 2-core host they share both with the upstream and wrk.
            scaling = [midway_target(f"midway-{workers}w", upstream, tmp / f"w{workers}", [],
                                     workers=workers, cpu=0 if workers == 1 else None)
                       for workers in (1, 2)]
            scaled = measure_group(scaling, "json", [64], args.duration, args.rounds, tmp,
                                   upstream_proc.pid)
            rows += scaled
            print(scaling_ceiling(*scaled))
        report(rows, baseline)
        Path(args.out).write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
        print(f"\nresults written to {args.out}")
    finally:
        upstream_proc.terminate()
        upstream_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
