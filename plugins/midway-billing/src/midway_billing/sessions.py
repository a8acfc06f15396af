"""Claude Code session and subagent attribution: the headers a row carries, and the subagent
tree ``billing report --by agent`` and the dashboard show.

The headers are client-supplied: a value is kept only if it is short and plain (an id, not a
payload), and it is written to the ledger only, never used as a metric label or a key of
anything held in memory, so that made-up ids cannot grow anything but the ledger rows the
requests make anyway.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import attrs
import orjson

from midway.exchange import Exchange
from midway_billing.store import FINGERPRINT_COLUMNS

SESSION_HEADER = "x-claude-code-session-id"
MAX_ID = 128
# UUIDs, Claude Code's agent ids and the name-based ids of agent-team teammates.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]*")
MAIN = "(main)"  # the session's own thread: requests that name no agent


def clean_id(value: str | None) -> str | None:
    """``value`` if it is a plausible id (at most 128 plain characters), else None."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_ID or not _ID.fullmatch(value):
        return None
    return value


@attrs.frozen
class Origin:
    """Which Claude Code session and subagent a request came from (None: not said, or not a
    valid id)."""

    session_id: str | None = None
    agent_id: str | None = None
    parent_agent_id: str | None = None

    @classmethod
    def of(cls, exchange: Exchange) -> Origin:
        """The session from its header; the agent ids as the core read and checked them
        (:mod:`midway.agents`)."""
        session = clean_id(exchange.request.headers.get(SESSION_HEADER))
        if session is None and exchange.agent_id is None and exchange.parent_agent_id is None:
            return UNSAID  # most requests: one shared (frozen) instance
        return cls(session, exchange.agent_id, exchange.parent_agent_id)

    def columns(self) -> dict[str, str | None]:
        return {"session_id": self.session_id, "agent_id": self.agent_id,
                "parent_agent_id": self.parent_agent_id}


# The origin of a request that names no session and no agent.
UNSAID = Origin()


def agent_tree(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per session, its agents as a tree, depth first: each with its own cost and its
    subtree's (itself and every agent below it).

    ``rows`` are the ledger's totals per (session_id, agent_id, parent_agent_id) with
    ``cost_pusd`` and ``requests``. An agent is placed under the parent its requests named
    most (ties: the smaller id); an agent with no (known) parent hangs under the session's
    main thread, and so does any agent whose parents would make a cycle.
    """
    sessions: dict[str | None, dict[str, dict[str, Any]]] = {}
    votes: dict[tuple[str | None, str], dict[str, int]] = {}
    for row in rows:
        session = row["session_id"]
        agent = row["agent_id"] or MAIN
        node = sessions.setdefault(session, {}).setdefault(
            agent, {"agent_id": agent, "own_pusd": 0, "requests": 0})
        node["own_pusd"] += int(row["cost_pusd"] or 0)
        node["requests"] += int(row["requests"] or 0)
        parent = row["parent_agent_id"]
        if agent != MAIN and parent and parent != agent:
            count = votes.setdefault((session, agent), {})
            count[parent] = count.get(parent, 0) + int(row["requests"] or 0)
    out: list[dict[str, Any]] = []
    for session in sorted(sessions, key=lambda s: (s is None, s or "")):
        nodes = sessions[session]
        nodes.setdefault(MAIN, {"agent_id": MAIN, "own_pusd": 0, "requests": 0})
        parents: dict[str, str] = {}
        for agent in nodes:
            if agent == MAIN:
                continue
            count = votes.get((session, agent), {})
            chosen = min(count, key=lambda p: (-count[p], p)) if count else MAIN
            parents[agent] = chosen if chosen in nodes else MAIN
        rooted = {MAIN}  # agents known to lead up to the main thread
        for agent in list(parents):  # break cycles: walk up; a revisit hangs it on main
            path: list[str] = []
            up = agent
            while up not in rooted:
                if up in path:
                    parents[path[-1]] = MAIN
                    break
                path.append(up)
                up = parents[up]
            rooted.update(path)
        children: dict[str, list[str]] = {}
        for agent, parent in parents.items():
            children.setdefault(parent, []).append(agent)
        # Depth first without recursion: a client may nest agents arbitrarily deep.
        order: list[tuple[str, int, str | None]] = []
        stack: list[tuple[str, int, str | None]] = [(MAIN, 0, None)]
        while stack:
            agent, depth, parent = stack.pop()
            order.append((agent, depth, parent))
            stack.extend((child, depth + 1, agent)
                         for child in sorted(children.get(agent, []), reverse=True))
        for agent, _, _ in reversed(order):  # children before their parents
            nodes[agent]["subtree_pusd"] = int(nodes[agent]["own_pusd"]) + sum(
                nodes[c]["subtree_pusd"] for c in children.get(agent, []))
        for agent, depth, parent in order:
            node = nodes[agent]
            out.append({"session_id": session, "agent_id": agent, "parent_agent_id": parent,
                        "depth": depth, "requests": node["requests"],
                        "own_pusd": node["own_pusd"], "subtree_pusd": node["subtree_pusd"]})
    return out


# -- prompt fingerprints and the cache-break detector -------------------------------------------

# Claude Code's first system block: an attribution line the Anthropic API strips before
# caching (docs: /work/shared/reference), so it is no part of the cached prefix.
ATTRIBUTION_PREFIX = "x-anthropic-billing-header:"
_HASH_CHARS = 16
# The upstream's default cache lifetime: a gap longer than this between two turns explains a
# break without any change to the prompt.
CACHE_LIFETIME = 300.0
CACHE_LIFETIME_1H = 3600.0


def _digest(value: Any) -> str:
    data = orjson.dumps(value, default=str)
    return hashlib.sha256(data).hexdigest()[:_HASH_CHARS]


def _without_cache_control(value: Any) -> Any:
    """A message with the ``cache_control`` markers of its blocks left out: Claude Code moves
    them to the newest messages, which changes nothing in the first one."""
    if isinstance(value, dict):
        content = value.get("content")
        if isinstance(content, list):
            content = [{k: v for k, v in block.items() if k != "cache_control"}
                       if isinstance(block, dict) else block for block in content]
            return {**value, "content": content}
    return value


def fingerprint(body: Any) -> dict[str, str | None]:
    """Short hashes of what a Messages request's cached prefix is made of: its system prompt
    (without Claude Code's attribution line), its tools, and its first message (which names
    the conversation — the thread — the request continues). None: the request has none, or
    is not a Messages request. Bodies need not be kept: these go on the ledger row."""
    if not isinstance(body, dict):
        return dict.fromkeys(FINGERPRINT_COLUMNS)
    system = body.get("system")
    if isinstance(system, list) and system and isinstance(system[0], dict) and \
            str(system[0].get("text", "")).startswith(ATTRIBUTION_PREFIX):
        system = system[1:]
    messages = body.get("messages")
    first = messages[0] if isinstance(messages, list) and messages else None
    tools = body.get("tools")
    return {"system_hash": _digest(system) if system else None,
            "tools_hash": _digest(tools) if tools else None,
            "thread_hash": _digest(_without_cache_control(first)) if first is not None
            else None}


def prefix_tokens(turn: dict[str, Any]) -> int:
    """The prompt's size as the upstream counted it: uncached input, cache reads and writes."""
    return int(turn["input_tokens"]) + int(turn["cache_read_tokens"]) + \
        int(turn["cache_write_5m_tokens"]) + int(turn["cache_write_1h_tokens"])


def _cached(turn: dict[str, Any]) -> int:
    """What a turn left in the upstream's cache: what it read and what it wrote."""
    return int(turn["cache_read_tokens"]) + int(turn["cache_write_5m_tokens"]) + \
        int(turn["cache_write_1h_tokens"])


def break_cause(previous: dict[str, Any], turn: dict[str, Any]) -> tuple[str, str]:
    """Why ``turn`` read less from the cache than ``previous`` left there: a short cause
    (``model``, ``system``, ``tools``, ``upstream``, several joined by ``+``; else
    ``expired`` or ``unknown``)
    and a sentence saying it."""
    changed = [(name, label) for name, label, column in (
        ("model", "the model", "model"), ("system", "the system prompt", "system_hash"),
        ("tools", "the tools", "tools_hash"), ("upstream", "the upstream", "upstream"))
        if previous.get(column) != turn.get(column)]
    if changed:
        what = " and ".join(label for _, label in changed)
        detail = f"{what} changed since the previous turn"
        if previous.get("model") != turn.get("model"):
            detail += f" ({previous.get('model')} -> {turn.get('model')})"
        return "+".join(name for name, _ in changed), detail
    gap = float(turn["created_at"]) - float(previous.get("ended_at") or previous["created_at"])
    # A turn that wrote with the 1-hour lifetime keeps its prefix that long.
    lifetime = CACHE_LIFETIME_1H if int(previous.get("cache_write_1h_tokens") or 0) \
        else CACHE_LIFETIME
    if gap > lifetime:
        return "expired", (f"{gap / 60:.0f} min since the previous turn: past the cache's "
                           f"{lifetime / 60:.0f}-minute lifetime")
    return "unknown", ("system prompt, tools and model unchanged: an earlier message was "
                       "edited, or the upstream evicted the cache")


def cache_breaks(turns: list[dict[str, Any]]) -> None:
    """Mark each turn whose prompt caching broke: one that read less from the cache than
    the previous turn of the same conversation left there (read + written), although its
    prompt did not shrink. Turns are compared with the previous one of the same principal,
    agent and thread (first message): a side request with its own first message, or a
    compacted conversation, starts a thread of its own, and another principal naming the same
    session id (it is the client's to choose) cannot make breaks appear in it. Only answered
    turns with usage count.

    Sets ``turn["cache_break"]`` to None or ``{"cause", "detail", "previous",
    "lost_tokens"}`` (``previous``: the exchange id compared with), in place; ``turns`` in
    the order they were sent."""
    last: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for turn in turns:
        turn["cache_break"] = None
        if not turn.get("ok") or prefix_tokens(turn) == 0:
            continue
        key = (turn.get("principal"), turn.get("agent_id"), turn.get("thread_hash"))
        previous = last.get(key)
        last[key] = turn
        if previous is None:
            continue
        expected = _cached(previous)
        if expected and prefix_tokens(turn) >= prefix_tokens(previous) and \
                int(turn["cache_read_tokens"]) < expected:
            cause, detail = break_cause(previous, turn)
            turn["cache_break"] = {"cause": cause, "detail": detail,
                                   "previous": previous.get("exchange_id"),
                                   "lost_tokens": expected - int(turn["cache_read_tokens"])}


# -- a session's turns --------------------------------------------------------------------------

TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_write_5m_tokens",
                "cache_write_1h_tokens", "cache_read_tokens")


def _ok(row: dict[str, Any]) -> bool:
    status = row.get("status")
    return row.get("state") == "pending" or (
        status is not None and 200 <= int(status) < 400 and row.get("error") is None)


def turns_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A session's ledger rows as turns (one per request, in the order they were sent): the
    final attempt's model, upstream, status and fingerprint; tokens and cost of every row of
    the request (retried attempts cost nothing; price corrections add theirs); ``ok``: some
    row of it was answered without an error. Then :func:`cache_breaks` marks them."""
    by_exchange: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_exchange.setdefault(str(row["exchange_id"]), []).append(row)
    turns = []
    for exchange_id, group in by_exchange.items():
        served = [r for r in group if r["kind"] != "reprice"] or group
        final = max(served, key=lambda r: int(r["attempt"]))
        turn: dict[str, Any] = {
            "exchange_id": exchange_id,
            "created_at": min(float(r["created_at"]) for r in group),
            "ended_at": max(float(r["settled_at"] if r["settled_at"] is not None
                                  else r["created_at"]) for r in served),
            "principal": final["principal"], "principal_name": final["principal_name"],
            "team": final["team"], "agent_id": final["agent_id"],
            "parent_agent_id": final["parent_agent_id"], "kind": final["kind"],
            "model": final["model"], "upstream": final["upstream"],
            "status": final["status"], "error": final["error"],
            "attempts": sum(1 for r in served if r["kind"] == "attempt"),
            "ok": any(_ok(r) for r in served), "pending": final["state"] == "pending",
            "cost_pusd": sum(int(r["cost_pusd"] or 0) for r in group),
            **{c: final.get(c) for c in FINGERPRINT_COLUMNS},
        }
        for field in TOKEN_FIELDS:
            turn[field] = sum(int(r[field] or 0) for r in served)
        turns.append(turn)
    turns.sort(key=lambda t: (t["created_at"], t["exchange_id"]))
    cache_breaks(turns)
    return turns


def summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """A session's totals from its turns (the same figures the session list gives)."""
    out: dict[str, Any] = {field: sum(int(t[field]) for t in turns) for field in TOKEN_FIELDS}
    prompt = sum(prefix_tokens(t) for t in turns)
    principals = sorted({str(t["principal"]) for t in turns})
    out.update(
        principal=principals[0] if principals else None, principals=len(principals),
        principal_name=next((t["principal_name"] for t in turns if t["principal_name"]), None),
        team=next((t["team"] for t in turns if t["team"]), None),
        started_at=min((t["created_at"] for t in turns), default=None),
        ended_at=max((t["ended_at"] for t in turns), default=None),
        turns=len(turns), agents=len({t["agent_id"] for t in turns if t["agent_id"]}),
        errors=sum(1 for t in turns if not t["ok"]),
        cost_pusd=sum(int(t["cost_pusd"]) for t in turns),
        cache_read_share=(out["cache_read_tokens"] / prompt) if prompt else None,
        cache_breaks=sum(1 for t in turns if t.get("cache_break")))
    return out


def tree_rows(session_id: str, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`agent_tree`'s input from a session's turns."""
    return [{"session_id": session_id, "agent_id": t["agent_id"],
             "parent_agent_id": t["parent_agent_id"], "cost_pusd": t["cost_pusd"],
             "requests": 1} for t in turns]
