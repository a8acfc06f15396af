"""Evaluating the semantic layer on labelled prompt pairs, with the same decision path as a
live lookup: same partition, similarity at or above the threshold, lexical guard.

* served-rate: of the pairs that should share an answer (paraphrases), the share served;
* wrong-rate: of the pairs that must not (negations, swapped entities, changed numbers or
  scope, the same question after a different conversation), the share served — each one a
  wrong answer a user would have received.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from multidict import CIMultiDict

from midway import Principal, Request
from midway_cache.config import CacheConfig
from midway_cache.embedders import make_embedder
from midway_cache.guard import agree
from midway_cache.keys import request_keys

SWEEP = (0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98)
_PRINCIPAL = Principal(id="eval", name="eval")


def load_pairs(path: Path | None = None) -> list[dict[str, Any]]:
    if path is None:
        text = (resources.files("midway_cache") / "data" / "eval_pairs.json").read_bytes()
    else:
        text = path.read_bytes()
    data = orjson.loads(text)
    pairs: list[dict[str, Any]] = data["pairs"] if isinstance(data, dict) else data
    return pairs


def _request(context: list[Any], prompt: str) -> Request:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 1024,
            "messages": [*context, {"role": "user", "content": prompt}]}
    return Request(method="POST", path="/v1/messages", query_string="",
                   headers=CIMultiDict({"anthropic-version": "2023-06-01"}),
                   body=orjson.dumps(body))


async def evaluate(config: CacheConfig, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    embedder = make_embedder(config)
    rows = []
    try:
        for pair in pairs:
            ka = request_keys(_request(pair.get("context_a", []), pair["a"]), _PRINCIPAL, "global")
            kb = request_keys(_request(pair.get("context_b", []), pair["b"]), _PRINCIPAL, "global")
            assert ka is not None
            assert kb is not None
            similarity = None
            guard_ok, reason = agree(pair["a"], pair["b"])
            if ka.partition != kb.partition:
                reason = "different context"
            else:
                va, vb = await embedder.embed(pair["a"]), await embedder.embed(pair["b"])
                if va is not None and vb is not None:
                    similarity = float(va @ vb)
            rows.append({**{k: pair[k] for k in ("kind", "should_hit", "a", "b")},
                         "similarity": similarity, "guard": guard_ok, "reason": reason})
    finally:
        await embedder.close()
    threshold = config.semantic_threshold
    guard = config.semantic_guard
    for row in rows:
        row["served"] = _served(row, threshold, guard)
    return {"threshold": threshold, "guard": guard, "embedder": config.embedder,
            **_rates(rows, threshold, guard),
            "sweep": [{"threshold": t, **_rates(rows, t, guard)} for t in SWEEP],
            "by_kind": _by_kind(rows), "pairs": rows}


def _served(row: dict[str, Any], threshold: float, guard: bool) -> bool:
    sim = row["similarity"]
    return sim is not None and sim >= threshold and (row["guard"] or not guard)


def _rates(rows: list[dict[str, Any]], threshold: float, guard: bool) -> dict[str, Any]:
    good = [r for r in rows if r["should_hit"]]
    bad = [r for r in rows if not r["should_hit"]]
    served = sum(_served(r, threshold, guard) for r in good)
    wrong = sum(_served(r, threshold, guard) for r in bad)
    return {"served_rate": served / len(good) if good else 0.0,
            "wrong_rate": wrong / len(bad) if bad else 0.0,
            "served": served, "should_hit": len(good), "wrong": wrong, "must_not": len(bad)}


def _by_kind(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    kinds: dict[str, dict[str, int]] = {}
    for row in rows:
        k = kinds.setdefault(row["kind"], {"pairs": 0, "served": 0})
        k["pairs"] += 1
        k["served"] += int(row["served"])
    return kinds


def render(report: dict[str, Any], verbose: bool = False) -> str:
    lines = [f"embedder {report['embedder']}, threshold {report['threshold']:.2f}, "
             f"guard {'on' if report['guard'] else 'off'}",
             f"served-rate {report['served_rate']:.1%} ({report['served']}/"
             f"{report['should_hit']} pairs that should hit)",
             f"wrong-rate  {report['wrong_rate']:.1%} ({report['wrong']}/"
             f"{report['must_not']} pairs that must not hit)", "", "by kind:"]
    for kind, counts in report["by_kind"].items():
        lines.append(f"  {kind:<14} served {counts['served']}/{counts['pairs']}")
    lines += ["", "threshold  served-rate  wrong-rate"]
    for row in report["sweep"]:
        lines.append(f"  {row['threshold']:.2f}     {row['served_rate']:6.1%}      "
                     f"{row['wrong_rate']:6.1%}")
    if verbose:
        lines += ["", "pairs:"]
        for row in report["pairs"]:
            sim = "  -   " if row["similarity"] is None else f"{row['similarity']:.4f}"
            mark = "SERVED" if row["served"] else "      "
            lines.append(f"  {sim} {mark} {row['kind']:<12} {row['a']!r} / {row['b']!r}"
                         + (f"  [{row['reason']}]" if row["reason"] else ""))
    return "\n".join(lines)
