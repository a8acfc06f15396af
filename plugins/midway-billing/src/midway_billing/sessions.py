"""Claude Code session and subagent attribution: the headers a row carries, and the subagent
tree ``billing report --by agent`` and the dashboard show.

The headers are client-supplied: a value is kept only if it is short and plain (an id, not a
payload), and it is written to the ledger only, never used as a metric label or a key of
anything held in memory, so that made-up ids cannot grow anything but the ledger rows the
requests make anyway.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from midway.exchange import Exchange

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
        return cls(clean_id(exchange.request.headers.get(SESSION_HEADER)),
                   exchange.agent_id, exchange.parent_agent_id)

    def columns(self) -> dict[str, str | None]:
        return {"session_id": self.session_id, "agent_id": self.agent_id,
                "parent_agent_id": self.parent_agent_id}


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
