"""Claude Code's subagent headers: read into the exchange, bounded and checked (any client can
send them, and they reach audit records, router rules and billing rows)."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from midway.agents import agent_ids
from midway.errors import MidwayError
from midway.testing import Harness

AGENT, PARENT = "x-claude-code-agent-id", "x-claude-code-parent-agent-id"


def send(headers: dict[str, str]) -> tuple[int, str, str | None, str | None, int]:
    async def go() -> tuple[int, str, str | None, str | None, int]:
        async with Harness() as h:
            result = await h.request(headers=headers)
            message = result.json()["error"]["message"] if result.status >= 400 else ""
            return (result.status, message, result.exchange.agent_id,
                    result.exchange.parent_agent_id, len(h.upstream.requests))
    return asyncio.run(go())


@pytest.mark.parametrize(("headers", "agent", "parent"), [
    ({}, None, None),  # the main agent sends neither
    ({AGENT: "a3f9c2d1e0b84a7f"}, "a3f9c2d1e0b84a7f", None),
    ({AGENT: "b1", PARENT: "a3f9c2d1e0b84a7f"}, "b1", "a3f9c2d1e0b84a7f"),
    ({AGENT: "reviewer@team-docs"}, "reviewer@team-docs", None),  # an agent team's teammate
    ({AGENT: "0c6e4a1f-6a8f-4d7e-9f3b-2a1d5c9e8b7a"}, "0c6e4a1f-6a8f-4d7e-9f3b-2a1d5c9e8b7a",
     None),
    ({AGENT: "  padded  "}, "padded", None),
    ({AGENT: "   "}, None, None),  # blank: not sent
    ({AGENT: "x" * 128}, "x" * 128, None),
])
def test_agent_ids_reach_the_exchange(headers: dict[str, str], agent: str | None,
                                      parent: str | None) -> None:
    status, _, seen_agent, seen_parent, sent = send(headers)
    assert (status, seen_agent, seen_parent, sent) == (200, agent, parent, 1)


@pytest.mark.parametrize(("headers", "expected"), [
    ({AGENT: "x" * 129}, f"{AGENT}: at most 128 characters, got 129"),
    ({PARENT: "a" * 10_000}, f"{PARENT}: at most 128 characters, got 10000"),
    ({AGENT: "a b"}, f"{AGENT}: only letters"),
    ({AGENT: "a\"b"}, f"{AGENT}: only letters"),
    ({PARENT: "<script>"}, f"{PARENT}: only letters"),
    ({AGENT: "é"}, f"{AGENT}: only letters"),
])
def test_a_bad_agent_id_is_a_clear_400_and_goes_nowhere(headers: dict[str, str],
                                                       expected: str) -> None:
    status, message, agent, parent, sent = send(headers)
    assert (status, agent, parent, sent) == (400, None, None, 0)
    assert message.startswith(expected)


def test_a_repeated_agent_header_is_refused() -> None:
    with pytest.raises(MidwayError) as caught:
        agent_ids(CIMultiDict([(AGENT, "a1"), (AGENT, "a2")]))
    assert (caught.value.status, caught.value.message) == (
        400, f"{AGENT}: sent 2 times; send it once")
