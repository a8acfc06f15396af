"""Evaluating the semantic layer on labelled prompt pairs, with the same decision path as a
live lookup: the prompts normalised as the lookup normalises them, same partition, similarity
at or above the threshold, lexical guard, verifier.

* served-rate: of the pairs that should share an answer (paraphrases), the share served;
* wrong-rate: of the pairs that must not (negations, swapped entities, changed numbers or
  scope, the same question after a different conversation), the share served — each one a
  wrong answer a user would have received.

Each rate comes with its 95 % Wilson score interval, overall and per family (``kind``).
"""

from __future__ import annotations

import math
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
from midway_cache.verify import Verifier

SWEEP = (0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.95, 0.97)
_Z = 1.959964  # 95 %
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
    vectors: dict[str, Any] = {}

    async def embed(text: str) -> Any:
        if text not in vectors:
            vectors[text] = await embedder.embed(text)
        return vectors[text]

    verifier = Verifier() if config.semantic_verifier else None

    try:
        for pair in pairs:
            ka = request_keys(_request(pair.get("context_a", []), pair["a"]), _PRINCIPAL, "global")
            kb = request_keys(_request(pair.get("context_b", []), pair["b"]), _PRINCIPAL, "global")
            if ka is None or kb is None or ka.prompt is None or kb.prompt is None:
                raise ValueError(f"not a plain-text last turn: {pair['a']!r} / {pair['b']!r}")
            # the prompts as the live lookup sees them (keys.prompt is normalised)
            similarity = None
            guard_ok, reason = agree(ka.prompt, kb.prompt)
            if ka.partition != kb.partition:
                reason = "different context"
            else:
                va, vb = await embed(ka.prompt), await embed(kb.prompt)
                if va is not None and vb is not None:
                    similarity = float(va @ vb)
            verified = True
            if similarity is not None and verifier is not None:
                verified, why = verifier.accepts(ka.prompt, kb.prompt, similarity)
                reason = reason or why
            rows.append({**{k: pair[k] for k in ("kind", "should_hit", "a", "b")},
                         "similarity": similarity, "guard": guard_ok, "verified": verified,
                         "reason": reason})
    finally:
        await embedder.close()
    threshold = config.default_threshold
    guard = config.semantic_guard
    for row in rows:
        row["served"] = _served(row, threshold, guard)
    return {"threshold": threshold, "guard": guard, "embedder": config.embedder,
            "verifier": verifier is not None,
            **_rates(rows, threshold, guard),
            "sweep": [{"threshold": t, **_rates(rows, t, guard)} for t in SWEEP],
            "by_kind": _by_kind(rows), "pairs": rows}


def _served(row: dict[str, Any], threshold: float, guard: bool) -> bool:
    sim = row["similarity"]
    return sim is not None and sim >= threshold and (row["guard"] or not guard) and \
        row.get("verified", True)


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a rate of ``k`` in ``n``."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + _Z * _Z / (2 * n)) / (1 + _Z * _Z / n)
    half = _Z * math.sqrt(p * (1 - p) / n + _Z * _Z / (4 * n * n)) / (1 + _Z * _Z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _rates(rows: list[dict[str, Any]], threshold: float, guard: bool) -> dict[str, Any]:
    good = [r for r in rows if r["should_hit"]]
    bad = [r for r in rows if not r["should_hit"]]
    served = sum(_served(r, threshold, guard) for r in good)
    wrong = sum(_served(r, threshold, guard) for r in bad)
    return {"served_rate": served / len(good) if good else 0.0,
            "served_ci": wilson(served, len(good)),
            "wrong_rate": wrong / len(bad) if bad else 0.0,
            "wrong_ci": wilson(wrong, len(bad)),
            "served": served, "should_hit": len(good), "wrong": wrong, "must_not": len(bad)}


def _by_kind(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per family: pairs, served, whether it should be served, the rate and its interval
    (a served-rate for paraphrase families, a wrong-rate for traps)."""
    kinds: dict[str, dict[str, Any]] = {}
    for row in rows:
        k = kinds.setdefault(row["kind"], {"pairs": 0, "served": 0,
                                           "should_hit": row["should_hit"]})
        k["pairs"] += 1
        k["served"] += int(row["served"])
    for k in kinds.values():
        k["rate"] = k["served"] / k["pairs"]
        k["ci"] = wilson(k["served"], k["pairs"])
    return kinds


def render(report: dict[str, Any], verbose: bool = False) -> str:
    def ci(bounds: Any) -> str:
        return f"[{bounds[0]:.1%}, {bounds[1]:.1%}]"

    lines = [f"embedder {report['embedder']}, threshold {report['threshold']:.2f}, "
             f"guard {'on' if report['guard'] else 'off'}, "
             f"verifier {'on' if report.get('verifier') else 'off'}",
             f"served-rate {report['served_rate']:.1%} {ci(report['served_ci'])} "
             f"({report['served']}/{report['should_hit']} pairs that should hit)",
             f"wrong-rate  {report['wrong_rate']:.1%} {ci(report['wrong_ci'])} "
             f"({report['wrong']}/{report['must_not']} pairs that must not hit)", "",
             "by family (95 % Wilson interval):"]
    for kind, k in report["by_kind"].items():
        what = "served" if k["should_hit"] else "wrong "
        lines.append(f"  {kind:<22} {what} {k['served']:>4}/{k['pairs']:<4} "
                     f"{k['rate']:6.1%} {ci(k['ci'])}")
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
