"""The canary on each Claude Code release: which version to test, and the compatibility matrix.

``--claude-code-version pinned|latest|X.Y.Z`` chooses the CLI the conformance suite runs;
``latest`` asks npm (``npm view``, bounded) and, when npm cannot be reached, tests the cached
pinned version instead and says so. Tests marked ``cc_cell(feature, format, upstream)`` are the
cells of the matrix (feature x client format x upstream); ``--cc-matrix-json PATH`` writes the
run's outcomes per cell, and ``python tests/claude_code/cc_canary.py render`` turns one or more
such files into docs/claude-code-compatibility.md (``nox -s canary`` does both).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

PACKAGE = "@anthropic-ai/claude-code"
NPM_TIMEOUT = 20.0  # seconds for `npm view` before npm counts as unreachable
VERSION_RE = re.compile(r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?")

FORMATS = ("anthropic", "bedrock", "vertex")
UPSTREAMS = ("anthropic", "openai", "bedrock", "vertex")
FORMAT_NAMES = {"anthropic": "Anthropic", "bedrock": "Bedrock", "vertex": "Vertex"}
UPSTREAM_NAMES = {"anthropic": "Anthropic", "openai": "OpenAI-compatible",
                  "bedrock": "Bedrock", "vertex": "Vertex"}
# The client format x upstream combinations the matrix has columns for (issue #21 item 11).
CELLS: tuple[tuple[str, str], ...] = (
    ("anthropic", "anthropic"), ("anthropic", "openai"), ("anthropic", "bedrock"),
    ("anthropic", "vertex"), ("bedrock", "bedrock"), ("bedrock", "anthropic"),
    ("vertex", "vertex"), ("vertex", "anthropic"),
)
# The core features every cell has a test of (rows, in this order); other features a test
# names follow them.
CORE_FEATURES = ("text turn", "streaming", "tool loop", "signed thinking", "count_tokens",
                 "cost equals Claude Code's", "errors")
# Cells where a feature has no meaning, and why (shown as n/a, not as a gap).
NOT_APPLICABLE: dict[tuple[str, str, str], str] = {
    ("signed thinking", "anthropic", "openai"):
        "an OpenAI-compatible vendor produces no signed thinking; midway drops thinking "
        "blocks it is sent, their signatures mean nothing there",
    ("count_tokens", "anthropic", "openai"):
        "an OpenAI-compatible API counts no tokens; midway answers Claude Code's count with a "
        "404 not_found_error in Anthropic's format (tested), and Claude Code estimates itself",
    ("cost equals Claude Code's", "anthropic", "openai"):
        "Claude Code prices the Claude model it asked for; midway bills the vendor's model "
        "at the vendor's price (billing's catalogue)",
}


class VersionError(RuntimeError):
    """A version spec that is neither ``pinned``, ``latest`` nor ``X.Y.Z``."""


@attrs.frozen
class Resolved:
    """The Claude Code version a run tests: ``requested`` as given, ``version`` as tested,
    ``note`` saying why they differ (npm unreachable), else None."""

    requested: str
    version: str
    pinned: str
    note: str | None = None

    def with_fallback(self, why: str) -> Resolved:
        return Resolved(self.requested, self.pinned, self.pinned,
                        f"{why}: testing the cached pinned version {self.pinned} instead")


def npm_latest(timeout: float = NPM_TIMEOUT, env: Mapping[str, str] | None = None) -> str:
    """npm's newest release of Claude Code; RuntimeError (one line) when npm cannot say."""
    npm = shutil.which("npm", path=(os.environ if env is None else env).get("PATH"))
    if npm is None:
        raise RuntimeError("npm is not on PATH")
    command = [npm, "view", PACKAGE, "version", "--fetch-retries=0",
               f"--fetch-timeout={int(timeout * 1000)}"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ if env is None else env), check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`npm view {PACKAGE} version` did not answer within "
                           f"{timeout:.0f} s") from None
    version = proc.stdout.strip()
    if proc.returncode != 0 or not VERSION_RE.fullmatch(version):
        lines = [line.removeprefix("npm error").strip()
                 for line in (proc.stderr or proc.stdout).splitlines()]
        why = next((line for line in lines if line), f"exit {proc.returncode}")
        raise RuntimeError(f"`npm view {PACKAGE} version` failed ({why})")
    return version


def resolve(spec: str, pinned: str, timeout: float = NPM_TIMEOUT,
            env: Mapping[str, str] | None = None) -> Resolved:
    """The version ``spec`` (pinned, latest or X.Y.Z) stands for; ``latest`` falls back to
    ``pinned`` when npm cannot be asked."""
    spec = spec.strip()
    if spec == "pinned":
        return Resolved("pinned", pinned, pinned)
    if spec == "latest":
        try:
            return Resolved("latest", npm_latest(timeout, env), pinned)
        except RuntimeError as exc:
            return Resolved("latest", pinned, pinned).with_fallback(
                f"npm is unreachable ({exc})")
    if VERSION_RE.fullmatch(spec):
        return Resolved(spec, spec, pinned)
    raise VersionError(f"--claude-code-version {spec!r}: expected pinned, latest or a version "
                       "such as 2.1.331")


# -- outcomes per cell ------------------------------------------------------------------------

def cell_key(feature: str, fmt: str, upstream: str) -> str:
    return f"{feature}|{fmt}|{upstream}"


def cells_of(marker_kwargs: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The (feature, format, upstream) cells one ``cc_cell`` marker names: ``feature`` is a
    name or a tuple of names."""
    features = marker_kwargs["feature"]
    if isinstance(features, str):
        features = (features,)
    fmt, upstream = marker_kwargs["format"], marker_kwargs["upstream"]
    if fmt not in FORMATS or upstream not in UPSTREAMS:
        raise ValueError(f"cc_cell: unknown format {fmt!r} or upstream {upstream!r}")
    return [(str(f), fmt, upstream) for f in features]


@attrs.define
class Outcomes:
    """What the tests of each cell did in one run."""

    cells: dict[str, dict[str, list[str]]] = attrs.field(factory=dict)
    collected: set[str] = attrs.field(factory=set)  # cells some collected test is marked for

    def collect(self, cells: Iterable[tuple[str, str, str]]) -> None:
        self.collected.update(cell_key(*cell) for cell in cells)

    def add(self, cells: Iterable[tuple[str, str, str]], nodeid: str, outcome: str) -> None:
        for cell in cells:
            entry = self.cells.setdefault(cell_key(*cell), {"passed": [], "failed": [],
                                                            "skipped": []})
            bucket = entry[outcome if outcome in entry else "failed"]
            if nodeid not in bucket:
                bucket.append(nodeid)

    def as_json(self, resolved: Resolved, quick: bool = False,
                when: dt.datetime | None = None) -> dict[str, Any]:
        when = when or dt.datetime.now(dt.UTC)
        return {"requested": resolved.requested, "version": resolved.version,
                "pinned": resolved.pinned, "note": resolved.note, "quick": quick,
                "date": when.strftime("%Y-%m-%d %H:%M UTC"), "cells": self.cells,
                "collected": sorted(self.collected)}


def verdict(entry: Mapping[str, Sequence[str]] | None, key: tuple[str, str, str],
            collected: Collection[str] = ()) -> str:
    """pass, fail, not run (a test exists, this run left it out), not covered, n/a."""
    if key in NOT_APPLICABLE:
        return "n/a"
    if entry and entry.get("failed"):
        return "fail"
    if entry and entry.get("passed"):
        return "pass"
    # skipped only: nothing was tried
    return "not run" if cell_key(*key) in collected else "not covered"


SYMBOLS = {"pass": "✅ pass", "fail": "❌ fail", "not run": "○ not run",
           "not covered": "· not covered", "n/a": "n/a"}


def render(runs: Sequence[Mapping[str, Any]], command: str = "nox -s canary") -> str:
    """docs/claude-code-compatibility.md from the runs' JSON (one per version tested)."""
    lines = [
        "# Claude Code compatibility matrix",
        "",
        "<!-- Generated by `nox -s canary` (tests/claude_code/cc_canary.py); do not edit. -->",
        "",
        "The Claude Code conformance suite (tests/claude_code) runs the real Claude Code CLI "
        "from npm through midway, every plugin enabled, in each client format Claude Code "
        "speaks (`ANTHROPIC_BASE_URL`; `CLAUDE_CODE_USE_BEDROCK=1` with "
        "`CLAUDE_CODE_SKIP_BEDROCK_AUTH=1`; `CLAUDE_CODE_USE_VERTEX=1` with "
        "`CLAUDE_CODE_SKIP_VERTEX_AUTH=1`) to each kind of upstream (Anthropic, an "
        "OpenAI-compatible vendor, Bedrock with SigV4 checked, Vertex with the OAuth2 token "
        "checked; the upstreams are fakes speaking their real wire formats). Each cell is "
        "the outcome of the tests marked for it: **pass** (all passed), **fail** (one "
        "failed), **not run** (left out of a quick run), **not covered** (no test), **n/a** "
        "(the feature has no meaning there).",
        "",
        f"Rerun: `{command}` (the pinned and npm's latest release; "
        "`-- --version latest|pinned|X.Y.Z` for one, `-- --quick` for the core cells of the "
        "latest release only). See [claude-code.md](claude-code.md#the-canary).",
        "",
    ]
    for run in runs:
        cells: Mapping[str, Mapping[str, Sequence[str]]] = run["cells"]
        label = run["requested"] if run["requested"] in ("pinned", "latest") else "requested"
        if run.get("note"):  # npm unreachable: the pinned version stood in
            label = f"pinned, tested in place of the {label}"
        elif run["requested"] == "latest" and run["version"] == run["pinned"]:
            label += ", the same as the pinned"
        lines += [f"## Claude Code {run['version']} ({label})", ""]
        lines.append(f"Tested {run['date']}; pinned version {run['pinned']}"
                     + ("; quick subset" if run.get("quick") else "") + ".")
        if run.get("note"):
            lines += ["", f"**Note:** {run['note']}."]
        lines.append("")
        features = list(CORE_FEATURES) + sorted(
            {k.split("|")[0] for k in (*cells, *run.get("collected", ()))} - set(CORE_FEATURES),
            key=str.lower)
        header = ["feature"] + [f"{FORMAT_NAMES[f]} → {UPSTREAM_NAMES[u]}" for f, u in CELLS]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        totals = {"pass": 0, "fail": 0}
        for feature in features:
            row = [feature]
            for fmt, upstream in CELLS:
                result = verdict(cells.get(cell_key(feature, fmt, upstream)),
                                 (feature, fmt, upstream), run.get("collected", ()))
                totals[result] = totals.get(result, 0) + 1
                row.append(SYMBOLS[result])
            lines.append("| " + " | ".join(row) + " |")
        failed = sorted({t for entry in cells.values() for t in entry.get("failed", ())})
        lines += ["", f"{totals['pass']} cells pass, {totals['fail']} fail, "
                  f"{totals.get('not run', 0)} not run, {totals.get('not covered', 0)} not "
                  "covered."]
        if failed:
            lines += ["", "Failed tests:", ""] + [f"- `{t}`" for t in failed]
        lines.append("")
    notes = sorted(NOT_APPLICABLE.items())
    if notes:
        lines += ["## n/a", ""]
        lines += [f"- {feature}, {FORMAT_NAMES[fmt]} → {UPSTREAM_NAMES[up]}: {why}."
                  for (feature, fmt, up), why in notes]
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("resolve", help="print the version a spec stands for")
    show.add_argument("spec")
    show.add_argument("--pinned", help="the pinned version (default: cc_support's)")
    out = sub.add_parser("render", help="write the matrix from the runs' JSON files")
    out.add_argument("runs", nargs="+", type=Path)
    out.add_argument("-o", "--output", type=Path)
    out.add_argument("--command", default="nox -s canary")
    out.add_argument("--quick", action="store_true", help="the runs were quick ones")
    args = parser.parse_args(argv)
    if args.command == "resolve":
        if args.pinned is None:
            from cc_support import CLAUDE_CODE_VERSION  # beside this file; imports midway
            args.pinned = CLAUDE_CODE_VERSION
        try:
            resolved = resolve(args.spec, args.pinned)
        except VersionError as exc:
            print(exc, file=sys.stderr)
            return 2
        if resolved.note:
            print(f"[claude-code] {resolved.note}", file=sys.stderr)
        print(resolved.version)
        return 0
    runs = [{**json.loads(path.read_text()), **({"quick": True} if args.quick else {})}
            for path in args.runs]
    text = render(runs, args.command)
    if args.output is None:
        print(text)
    else:
        args.output.write_text(text)
        print(f"[claude-code] wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
