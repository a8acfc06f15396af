"""``nox -s bench`` (after bench/run.py): the semantic cache lookup on one core.

What a semantic lookup costs in-process, without HTTP: the request's keys, the last turn
embedded (all-MiniLM-L6-v2 on onnxruntime, its products in int8, windowed to 64 tokens), the
partition's vectors compared, the lexical guard and the verifier on the best candidate. The
partition holds ``--entries`` stored prompts. Measured for a last turn of 256 WordPiece tokens (the
issue's target: p50 <= 10 ms on one core) and of 16, as

* miss: nothing in the partition is close;
* hit: a stored prompt asked again with other capitals and punctuation;
* verify: a stored prompt with one word replaced by a synonym (0.85 or more similar: served);
* burst: 16 lookups at once (one hop to the model's thread): time per lookup.

Each case prints p50/p95 wall time and the user CPU time per lookup (all threads; steadier
than wall time on a shared machine). The last line is the issue's figure: p50 of a 256-token
lookup (the median of the miss, hit and verify cases' p50s).

    python bench/cache_lookup.py [--rounds 200] [--entries 200] [--cpu 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from typing import Any

import orjson
from multidict import CIMultiDict

from midway import Principal, Request
from midway_cache.embedders import MiniLMEmbedder
from midway_cache.keys import request_keys
from midway_cache.semantic import SemanticIndex
from midway_cache.stores.base import Candidate
from midway_cache.verify import Verifier

TOPICS = ["the billing service", "our React front end", "the Kafka consumer", "a Go CLI",
          "the nightly ETL job", "a Django admin page", "the mobile app", "a Rust parser"]
SENTENCES = [
    "We deploy {t} from a monorepo with a small CI pipeline that builds, tests and ships.",
    "Last week {t} started timing out under load after a dependency upgrade.",
    "The logs show retries piling up and the queue depth growing during the evening peak.",
    "I would like a short explanation of the likely causes and what to check first.",
    "Please keep the answer practical and mention any metrics worth adding to dashboards.",
    "We cannot restart the cluster during business hours, so a rolling approach is needed.",
]


def prompt(topic: str, tokens: int, tokenizer: Any) -> str:
    text, i = "", 0
    while True:
        sentence = SENTENCES[i % len(SENTENCES)].format(t=topic)
        candidate = (text + " " + sentence).strip()
        if len(tokenizer.encode(candidate).ids) > tokens:
            words = candidate.split()
            while len(tokenizer.encode(" ".join(words)).ids) > tokens:
                words.pop()
            return " ".join(words)
        text, i = candidate, i + 1


class MemoryStore:
    """The one method the index reads: the partition's candidates."""

    def __init__(self, candidates: list[Candidate]) -> None:
        self._candidates = candidates

    async def candidates(self, partition: str, now: float) -> list[Candidate]:
        return self._candidates


def user_cpu() -> float:
    """User CPU seconds of this process, all its threads (the model runs on its own)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def request(text: str) -> Request:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 512,
            "messages": [{"role": "user", "content": text}]}
    return Request(method="POST", path="/v1/messages", query_string="",
                   headers=CIMultiDict({"anthropic-version": "2023-06-01"}),
                   body=orjson.dumps(body))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--entries", type=int, default=200)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {args.cpu})
    load = os.getloadavg()[0]
    embedder = MiniLMEmbedder()
    await embedder.warm()
    tokenizer = embedder._tokenizer
    principal = Principal(id="bench", name="bench")
    results: dict[str, Any] = {}
    for tokens in (256, 16):
        stored = [prompt(f"{t} #{i}", tokens, tokenizer)
                  for i in range(args.entries // len(TOPICS) + 1) for t in TOPICS]
        stored = stored[:args.entries]
        vectors = embedder.embed_batch_sync(stored)
        store = MemoryStore([Candidate(key=f"k{i}", prompt=p, tool_use=False,
                                       vector=v.tobytes())
                             for i, (p, v) in enumerate(zip(stored, vectors, strict=True))
                             if v is not None])
        index = SemanticIndex(store, guard=True, verifier=Verifier())  # type: ignore[arg-type]
        target = stored[3]
        first = target.split()[0]
        cases = {
            "miss": prompt("a Haskell type checker", tokens, tokenizer),
            "hit": target.replace(first, first.upper(), 1).rstrip(".") + "!",
            "verify": target.replace("deploy", "ship"),
        }

        async def lookup(text: str, index: SemanticIndex = index) -> bool:
            keys = request_keys(request(text), principal, "global")
            assert keys is not None
            assert keys.partition is not None
            assert keys.prompt is not None
            vector = await embedder.embed(keys.prompt)
            assert vector is not None
            match = await index.best("p", vector, keys.prompt, 0.70, False, time.time())
            return match is not None

        async def embed(text: str) -> bool:
            await embedder.embed(text)
            return False

        for case, text in [*cases.items(), ("embed", cases["miss"])]:
            run = embed if case == "embed" else lookup
            served = await run(text)
            timings = []
            cpu = user_cpu()
            for _ in range(args.rounds):
                start = time.perf_counter()
                await run(text)
                timings.append((time.perf_counter() - start) * 1000)
            cpu = (user_cpu() - cpu) * 1000 / args.rounds
            timings.sort()
            results[f"{tokens}-{case}"] = {
                "tokens": len(tokenizer.encode(text).ids),
                "served": None if case == "embed" else served,
                "p50_ms": round(statistics.median(timings), 2),
                "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 2),
                "user_cpu_ms": round(cpu, 2)}
        burst = [cases["miss"] + f" ({i})" for i in range(16)]
        start = time.perf_counter()
        for _ in range(max(1, args.rounds // 16)):
            await asyncio.gather(*(lookup(t) for t in burst))
        per = (time.perf_counter() - start) * 1000 / (16 * max(1, args.rounds // 16))
        results[f"{tokens}-burst16"] = {"per_lookup_ms": round(per, 2)}
    await embedder.close()
    print(f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on "
          f"{os.cpu_count()} cores (wall times grow with it; user CPU much less)")
    print(f"semantic cache lookup, one core (CPU {args.cpu}), {args.entries} entries in the "
          "partition, minilm int8, guard + verifier:")
    for name, row in results.items():
        if "p50_ms" in row:
            print(f"  {name:<12} {row['tokens']:>4} tokens  served={row['served']!s:<5} "
                  f"p50 {row['p50_ms']:6.2f} ms  p95 {row['p95_ms']:6.2f} ms  "
                  f"user CPU {row['user_cpu_ms']:6.2f} ms")
        else:
            print(f"  {name:<12} {row['per_lookup_ms']:6.2f} ms per lookup (16 at once)")
    p50 = statistics.median(results[f"256-{c}"]["p50_ms"] for c in ("miss", "hit", "verify"))
    cpu = statistics.median(results[f"256-{c}"]["user_cpu_ms"] for c in ("miss", "hit", "verify"))
    results["p50_lookup_256_ms"] = p50
    print(f"p50 lookup, 256-token prompt: {p50:.2f} ms (target <= 10 ms), user CPU "
          f"{cpu:.2f} ms per lookup")
    if args.out:
        with open(args.out, "wb") as f:
            f.write(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if not results["256-hit"]["served"] or not results["256-verify"]["served"] or \
            results["256-miss"]["served"]:
        sys.exit("cache_lookup: the bench's hit/verify/miss cases were not judged as expected")


if __name__ == "__main__":
    asyncio.run(main())
