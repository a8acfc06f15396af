"""``nox -s bench`` (after bench/run.py): the semantic cache lookup on one core.

What a semantic lookup costs in-process, without HTTP: the request's keys, the last turn
embedded (all-MiniLM-L6-v2 int8 on onnxruntime, windowed to 64 tokens), the partition's
vectors compared, the lexical guard and the verifier on the best candidate. The partition
holds ``--entries`` stored prompts. Measured for a last turn of 256 WordPiece tokens (the
issue's target: p50 <= 10 ms on one core) and of 16, as

* miss: nothing in the partition is close;
* hit: a stored prompt asked again with other capitals and punctuation;
* verify: a stored prompt with one word replaced by a synonym (0.85 or more similar: served);
* burst: 16 lookups at once (batched on the model's thread): time per lookup.

    python bench/cache_lookup.py [--rounds 200] [--entries 200] [--cpu 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

        for case, text in cases.items():
            served = await lookup(text)
            timings = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                await lookup(text)
                timings.append((time.perf_counter() - start) * 1000)
            timings.sort()
            results[f"{tokens}-{case}"] = {
                "tokens": len(tokenizer.encode(text).ids), "served": served,
                "p50_ms": round(statistics.median(timings), 2),
                "p95_ms": round(timings[int(len(timings) * 0.95) - 1], 2)}
        timings = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            await embedder.embed(cases["miss"])
            timings.append((time.perf_counter() - start) * 1000)
        results[f"{tokens}-embed"] = {"tokens": len(tokenizer.encode(cases["miss"]).ids),
                                      "served": None,
                                      "p50_ms": round(statistics.median(timings), 2),
                                      "p95_ms": round(sorted(timings)[int(len(timings) * 0.95)
                                                                     - 1], 2)}
        burst = [cases["miss"] + f" ({i})" for i in range(16)]
        start = time.perf_counter()
        for _ in range(max(1, args.rounds // 16)):
            await asyncio.gather(*(lookup(t) for t in burst))
        per = (time.perf_counter() - start) * 1000 / (16 * max(1, args.rounds // 16))
        results[f"{tokens}-burst16"] = {"per_lookup_ms": round(per, 2)}
    await embedder.close()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (the figures "
          "grow with it)")
    print(f"semantic cache lookup, one core (CPU {args.cpu}), {args.entries} entries in the "
          "partition, minilm int8, guard + verifier:")
    for name, row in results.items():
        if "p50_ms" in row:
            print(f"  {name:<12} {row['tokens']:>4} tokens  served={row['served']!s:<5} "
                  f"p50 {row['p50_ms']:6.2f} ms  p95 {row['p95_ms']:6.2f} ms")
        else:
            print(f"  {name:<12} {row['per_lookup_ms']:6.2f} ms per lookup (16 at once)")
    if args.out:
        with open(args.out, "wb") as f:
            f.write(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if not results["256-hit"]["served"] or not results["256-verify"]["served"] or \
            results["256-miss"]["served"]:
        sys.exit("cache_lookup: the bench's hit/verify/miss cases were not judged as expected")


if __name__ == "__main__":
    asyncio.run(main())
