"""The dashboard's live-traffic window, in process: bytes retained per remembered request
(tracemalloc), CPU of recording one finished request (what ``post_response`` does), and CPU of
the readers over a full window.

    python bench/dashboard_window.py [--events 100000] [--repeat 5] [--adds N]

Exchanges of realistic variety: a few models (the answer's model a new str per answer, as
parsed), 50 principals, two upstreams with two keys each, cache outcomes, some errors, token
counts and costs that vary. ``--adds N`` only records N requests (for callgrind: run it twice,
with N and 2N, and divide the difference by N for instructions per request)."""

from __future__ import annotations

import argparse
import gc
import random
import timeit
import tracemalloc
from collections.abc import Callable, Iterator

from midway.exchange import Attempt, Exchange, Upstream
from midway.testing import make_exchange
from midway_dashboard.window import TrafficWindow

MODELS = ["claude-sonnet-4-6-20260101", "claude-opus-4-6-20260101", "claude-haiku-4-5-20251001"]
UPSTREAMS = [Upstream(url="http://a", name=n, key_id=k)
             for n in ("anthropic", "bedrock") for k in ("k1a2b3", "k4c5d6")]
CACHE = [None, None, "miss", "hit", "semantic-hit", "bypass"]
PRINCIPALS = [f"user{i}" for i in range(50)]  # shared: from the keys' config


def exchanges(n: int, seed: int = 1) -> Iterator[Exchange]:
    rng = random.Random(seed)
    for i in range(n):
        ex = make_exchange()
        r = rng.random()
        ex.status, error_type = (200, None) if r < 0.9 else \
            (529, "overloaded_error") if r < 0.95 else \
            (429, "rate_limit_error") if r < 0.98 else (400, "invalid_request_error")
        # both parsed from each answer: equal strings, distinct objects
        ex.error_type = None if error_type is None else _fresh(error_type)
        if ex.status == 200:
            ex.response_model = _fresh(rng.choice(MODELS))
        ex.streaming = rng.random() < 0.6
        ex.principal.name = rng.choice(PRINCIPALS)
        ex.upstream = rng.choice(UPSTREAMS)
        if rng.random() < 0.95:  # the others answered without an upstream (a cache hit)
            ex.attempts.append(Attempt(number=1, id=ex.id, upstream=ex.upstream, started=0.0))
        cache = rng.choice(CACHE)
        if cache is not None:
            ex.annotations["cache"] = cache
        if ex.status == 200:
            ex.annotations["cost_usd"] = f"{rng.random() / 10:.6f}"
        ex.usage.input_tokens = rng.randrange(10, 50_000)
        ex.usage.output_tokens = rng.randrange(1, 4000)
        ex.timings.started_at = 1_800_000_000.0 + i * 0.009
        ex.timings.total_ms = rng.uniform(50, 30_000)
        ex.timings.ttfb_ms = rng.uniform(20, 2000) if ex.status == 200 else None
        yield ex


def _fresh(text: str) -> str:
    return (text + " ")[:-1]


def recorder(window: TrafficWindow) -> Callable[..., None]:
    try:
        from midway_dashboard.window import (  # type: ignore[attr-defined]  # the version before
            event_from_exchange,
        )
    except ImportError:
        return window.add
    add = window.add
    return lambda ex: add(event_from_exchange(ex))


def memory(n: int, repeat: int) -> None:
    # Each exchange made, recorded and dropped, as in the relay: what stays is the window's.
    tracemalloc.start()
    window = TrafficWindow(window_seconds=10 ** 9, max_events=n)
    record = recorder(window)
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    last = 0.0
    for ex in exchanges(n):
        record(ex)
        last = ex.timings.started_at
    del ex
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"memory: {n} requests retain {(after - before) / 1e6:.2f} MB, "
          f"{(after - before) / n:.0f} B a request")
    readers(window, last + 60, repeat)


def readers(window: TrafficWindow, now: float, repeat: int) -> None:
    for name, fn in [("traffic", lambda: window.traffic(now=now, span=900)),
                     ("cache_series", lambda: window.cache_series(now=now)),
                     ("by_upstream", lambda: window.by_upstream(now=now, span=900)),
                     ("recent(100)", lambda: window.recent(100))]:
        best = min(timeit.repeat(fn, number=1, repeat=repeat))
        print(f"reader {name}: {best * 1e3:.1f} ms over a full window (best of {repeat})")


def cpu(repeat: int) -> None:
    # A full window (steady state: each request recorded pushes one out), 1000 exchanges
    # recorded in turn, their end times moved on as a real clock would.
    pool = list(exchanges(1000))
    window = TrafficWindow(window_seconds=900.0, max_events=100_000)
    record = recorder(window)
    t = [1_800_000_000.0]

    def run() -> None:
        for ex in pool:
            t[0] += 0.009
            ex.timings.started_at = t[0]
            record(ex)

    def baseline() -> None:  # the same loop without the recording, subtracted
        for ex in pool:
            t[0] += 0.009
            ex.timings.started_at = t[0]

    for _ in range(100):  # fill the window
        run()
    rounds = 100
    times = timeit.repeat(run, number=rounds, repeat=repeat)
    base = min(timeit.repeat(baseline, number=rounds, repeat=repeat))
    per = [(x - base) / rounds / len(pool) * 1e6 for x in times]
    print(f"cpu: {min(per):.2f} us a request recorded (best of {repeat}; "
          f"all: {', '.join(f'{p:.2f}' for p in per)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--adds", type=int, help="only record this many requests")
    args = parser.parse_args()
    if args.adds is not None:
        pool = list(exchanges(1000))
        window = TrafficWindow()
        record = recorder(window)
        for i in range(args.adds):
            record(pool[i % 1000])
        return
    memory(args.events, args.repeat)
    cpu(args.repeat)


if __name__ == "__main__":
    main()
