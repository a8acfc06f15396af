"""Claude Code's subagent headers, read once per request and checked.

Claude Code names the subagent that issued a request in ``x-claude-code-agent-id`` (fresh per
spawn; teammates of an agent team reuse a name-based id) and its parent in
``x-claude-code-parent-agent-id``; the main agent sends neither. midway records them
(``Exchange.agent_id``, ``parent_agent_id``: audit records, router rules, billing rows). Any
client can send these headers, so a value is bounded and plain before anything keeps it.
"""

from __future__ import annotations

import re

from multidict import CIMultiDict

from midway.errors import MidwayError

AGENT_HEADER = "x-claude-code-agent-id"
PARENT_AGENT_HEADER = "x-claude-code-parent-agent-id"
MAX_AGENT_ID = 128
# uuids, "a1b2…" ids and name-based ids ("reviewer@team-x"): printable, no spaces or quotes
_AGENT_ID = re.compile(r"[A-Za-z0-9._:@/+=-]+")


def agent_ids(headers: CIMultiDict[str]) -> tuple[str | None, str | None]:
    """The request's agent id and parent agent id (``None``: not sent, or blank). A value too
    long, repeated, or holding anything but letters, digits and ``. _ : @ / + = -`` is refused
    with a 400 naming the header."""
    if AGENT_HEADER not in headers and PARENT_AGENT_HEADER not in headers:
        return None, None  # the main agent, and every other client: the common case
    return _one(headers, AGENT_HEADER), _one(headers, PARENT_AGENT_HEADER)


def _one(headers: CIMultiDict[str], name: str) -> str | None:
    values = headers.getall(name, ())
    if not values:
        return None
    if len(values) > 1:
        raise MidwayError(400, f"{name}: sent {len(values)} times; send it once")
    value = values[0].strip()
    if not value:
        return None
    if len(value) > MAX_AGENT_ID:
        raise MidwayError(400, f"{name}: at most {MAX_AGENT_ID} characters, got {len(value)}")
    if not _AGENT_ID.fullmatch(value):
        raise MidwayError(400, f"{name}: only letters, digits and . _ : @ / + = - are allowed")
    return value
