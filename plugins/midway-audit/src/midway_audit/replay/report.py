"""The replay's report: per turn, the recorded and the replayed side (status, stop reason,
tools called, tokens, cost, latency) and where the answers diverged.

The divergence is the first difference between the two answers, in this order: the status,
then the content blocks one by one (their kind, a tool's name, then the text, thinking or
tool input), then the stop reason. The model the answer names is shown, and listed among the
``differences``, but is not a divergence of the answer: replaying on another model is often
the point.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import attrs

from midway.cliformat import Column, Table, money, to_json
from midway_audit.replay.runner import Bounds, Replayed
from midway_audit.replay.session import Session, Turn

TOOL_BLOCKS = ("tool_use", "server_tool_use", "mcp_tool_use")
REDACTED = "[REDACTED:"
_TOKENS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
           "cache_creation_input_tokens")


def tools(answer: dict[str, Any] | None) -> list[str]:
    """The tools an answer calls, in order."""
    return [str(b.get("name")) for b in _blocks(answer) if b.get("type") in TOOL_BLOCKS]


def _blocks(answer: dict[str, Any] | None) -> list[dict[str, Any]]:
    content = answer.get("content") if isinstance(answer, dict) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _kind(block: dict[str, Any] | None) -> str | None:
    if block is None:
        return None
    kind = str(block.get("type"))
    return f"{kind} {block.get('name')}" if kind in TOOL_BLOCKS else kind


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else to_json(value, indent=False)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def divergence(recorded: dict[str, Any] | None, recorded_status: Any,
               replayed: dict[str, Any] | None, replayed_status: Any) -> dict[str, Any] | None:
    """The first difference between two answers (None: the same answer)."""
    if recorded_status != replayed_status:
        return {"at": "status", "recorded": recorded_status, "replayed": replayed_status}
    if recorded is None or replayed is None:
        return None
    ours, theirs = _blocks(recorded), _blocks(replayed)
    for index in range(max(len(ours), len(theirs))):
        a = ours[index] if index < len(ours) else None
        b = theirs[index] if index < len(theirs) else None
        at = f"content[{index}]"
        if a is None or b is None or a.get("type") != b.get("type"):
            return {"at": at, "what": "block", "recorded": _kind(a), "replayed": _kind(b)}
        kind = a.get("type")
        if kind in TOOL_BLOCKS:
            if a.get("name") != b.get("name"):
                return {"at": at, "what": "tool", "recorded": a.get("name"),
                        "replayed": b.get("name")}
            if a.get("input") != b.get("input"):
                return {"at": at, "what": "tool input", "recorded": _short(a.get("input")),
                        "replayed": _short(b.get("input"))}
        else:
            field = "thinking" if kind == "thinking" else "text"
            if a.get(field) != b.get(field):
                return {"at": at, "what": field, "recorded": _short(a.get(field)),
                        "replayed": _short(b.get(field))}
    if recorded.get("stop_reason") != replayed.get("stop_reason"):
        return {"at": "stop_reason", "recorded": recorded.get("stop_reason"),
                "replayed": replayed.get("stop_reason")}
    return None


def describe(diverged: dict[str, Any] | None) -> str:
    """One line for the text report."""
    if diverged is None:
        return "same answer"
    what = f" {diverged['what']}" if diverged.get("what") else ""
    return f"{diverged['at']}{what}: {diverged['recorded']} → {diverged['replayed']}"


@attrs.define
class TurnReport:
    turn: Turn
    replayed: Replayed
    recorded_cost: Decimal | None

    def recorded_side(self) -> dict[str, Any]:
        record = self.turn.record
        answer = self.turn.answer
        return {"status": record.get("status"),
                "stop_reason": record.get("stop_reason") or (answer or {}).get("stop_reason"),
                "tools": tools(answer), "model": record.get("response_model"),
                "upstream": record.get("upstream"), **_tokens(record.get("usage")),
                "cost_usd": self.recorded_cost, "latency_ms": record.get("total_ms"),
                "error": record.get("error")}

    def replayed_side(self) -> dict[str, Any]:
        out = self.replayed
        if not out.sent:
            return {"sent": False, "not_sent": out.not_sent}
        return {"status": out.status,
                "stop_reason": (out.answer or {}).get("stop_reason") if out.answer else None,
                "tools": tools(out.answer), "model": out.model, "upstream": out.upstream,
                **_tokens(out.usage), "cost_usd": out.cost_usd, "unpriced": out.unpriced,
                "latency_ms": out.latency_ms, "error": out.error,
                "request_id": out.request_id}

    def as_dict(self) -> dict[str, Any]:
        recorded, replayed = self.recorded_side(), self.replayed_side()
        entry: dict[str, Any] = {
            "turn": self.turn.number, "request_id": self.turn.record.get("id"),
            "agent_id": self.turn.record.get("agent_id"),
            "requested_model": self.turn.body.get("model"),
            # values audit masked are sent masked: the replayed request differs there
            "redactions": str(self.turn.record.get("request_body") or "").count(REDACTED),
            "recorded": recorded, "replayed": replayed}
        if not self.replayed.sent:
            entry.update(diverged=None, differences=[], compared=False)
            return entry
        answer = self.turn.answer
        entry["compared"] = answer is not None or recorded["status"] != replayed["status"]
        entry["diverged"] = divergence(answer, recorded["status"], self.replayed.answer,
                                       replayed["status"])
        entry["differences"] = [k for k in ("status", "model", "stop_reason", "tools")
                                if recorded.get(k) != replayed.get(k)]
        return entry


def _tokens(usage: Any) -> dict[str, Any]:
    usage = usage if isinstance(usage, dict) else {}
    return {k: usage.get(k) for k in _TOKENS}


def build(session: Session, results: list[Replayed], recorded_costs: list[Decimal | None],
          bounds: Bounds, config: str | None, upstream: str | None, model: str | None,
          stopped: str | None) -> dict[str, Any]:
    """The whole report, as ``--json`` prints it."""
    turns = [TurnReport(t, r, c).as_dict()
             for t, r, c in zip(session.turns, results, recorded_costs, strict=True)]
    sent = [t for t in turns if t["replayed"].get("sent", True)]

    def total(side: str, key: str) -> Any:
        values = [t[side].get(key) for t in sent]
        if any(v is None for v in values):
            return None
        return sum(values, Decimal(0)) if key.endswith("_usd") else sum(values)

    return {
        "session": session.id, "config": config, "upstream": upstream, "model": model,
        "bounds": {"max_turns": bounds.max_turns, "budget_usd": bounds.budget_usd,
                   "timeout": bounds.timeout, "concurrency": bounds.concurrency},
        "turns": turns,
        "summary": {
            "turns_recorded": session.total, "turns_replayed": len(sent),
            "turns_diverged": sum(1 for t in sent if t["diverged"] is not None),
            "beyond_max_turns": session.total - len(session.turns),
            "other_requests": session.others, "interrupted_requests": session.interrupted,
            "recorded_cost_usd": total("recorded", "cost_usd"),
            "replayed_cost_usd": total("replayed", "cost_usd"),
            "stopped": stopped},
    }


def _cost(value: Any) -> str:
    return "-" if value is None else money(value)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}" if isinstance(value, float) else str(value)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def render(report: dict[str, Any], wide: bool = False) -> str:
    """The text report: two rows per turn, the recorded one and the replayed one, the
    divergence on the second."""
    rows: list[dict[str, Any]] = []
    for turn in report["turns"]:
        rows.append({"turn": str(turn["turn"]), "side": "recorded", **turn["recorded"],
                     "diverged": ""})
        replayed = turn["replayed"]
        if not replayed.get("sent", True):
            rows.append({"turn": str(turn["turn"]), "side": "replay", "diverged":
                         f"not sent: {replayed['not_sent']}"})
            continue
        note = describe(turn["diverged"]) if turn["compared"] else \
            "not compared: the recorded answer is not in the audit trail"
        rows.append({"turn": str(turn["turn"]), "side": "replay", **replayed, "diverged": note})
    table = Table([
        Column("TURN", "turn", 4, right=True, shrink=False),
        Column("SIDE", "side", 8, shrink=False),
        Column("STATUS", "status", 6, right=True, shrink=False),
        Column("STOP", "stop_reason", 10, drop=4),
        Column("TOOLS", lambda r: ",".join(r.get("tools") or ()) or "-", 12),
        Column("MODEL", "model", 17, drop=2),
        Column("IN", "input_tokens", 7, right=True, drop=3),
        Column("OUT", "output_tokens", 6, right=True, drop=3),
        Column("CACHE R/W", lambda r: "-" if r.get("side") == "replay" and "status" not in r
               else f"{_num(r.get('cache_read_input_tokens'))}/"
               f"{_num(r.get('cache_creation_input_tokens'))}", 9, drop=1),
        Column("COST $", "cost_usd", 9, right=True, format=_cost),
        Column("MS", "latency_ms", 7, right=True, format=_num, drop=5),
        Column("DIVERGED", "diverged", 30),
    ], wide=wide)
    summary = report["summary"]
    head = (f"session {report['session']}: {summary['turns_replayed']} of "
            f"{summary['turns_recorded']} turns replayed"
            + (f" on upstream {report['upstream']}" if report["upstream"] else "")
            + (f" with model {report['model']}" if report["model"] else ""))
    lines = [head, *([f"config: {report['config']}"] if report["config"] else []), "",
             table.render(rows), ""]
    lines.append(f"diverged: {summary['turns_diverged']} of "
                 f"{_count(summary['turns_replayed'], 'turn')}; "
                 f"cost: recorded ${_cost(summary['recorded_cost_usd'])}, replayed "
                 f"${_cost(summary['replayed_cost_usd'])}")
    masked = sum(t["redactions"] for t in report["turns"] if t["replayed"].get("sent", True))
    if masked:
        lines.append(f"sent as audit kept them: {_count(masked, 'value')} masked by its "
                     "redaction")
    left = []
    if summary["beyond_max_turns"]:
        left.append(f"{_count(summary['beyond_max_turns'], 'turn')} beyond --max-turns")
    if summary["other_requests"]:
        left.append(f"{_count(summary['other_requests'], 'request')} other than /v1/messages")
    if summary["interrupted_requests"]:
        left.append(f"{_count(summary['interrupted_requests'], 'interrupted request')} (no "
                    "bodies)")
    if left:
        lines.append("not replayed: " + ", ".join(left))
    if summary["stopped"]:
        lines.append(f"stopped: {summary['stopped']}")
    return "\n".join(lines)
