"""Subagents through midway: the real CLI spawns one; its requests carry
``x-claude-code-agent-id``, which midway accepts, records in audit and routes on."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from cc_support import Claude, Stack, text_reply
from openai_upstream import ChatReply, OpenAIUpstream

from midway.testing import FakeUpstream, RecordedRequest, Reply

AGENT_TOOLS = ("Agent", "Task")


def _agent_tool(request: RecordedRequest) -> str:
    names = [t.get("name") for t in orjson.loads(request.body).get("tools") or []]
    found = [n for n in AGENT_TOOLS if n in names]
    assert found, f"no agent tool among {names}"
    return found[0]


def script(request: RecordedRequest) -> Reply:
    """The main agent's turns: spawn a subagent, then answer with what it said."""
    body: dict[str, Any] = orjson.loads(request.body)
    if request.headers.get("x-claude-code-agent-id"):
        return text_reply("The subagent looked: all clear.")
    if len(body["messages"]) == 1:
        return Reply(content=[{"type": "tool_use", "id": "toolu_01SubagentSpawn0001",
                               "name": _agent_tool(request), "input": {
                                   "description": "Check the repository",
                                   "prompt": "Say all clear.",
                                   "subagent_type": "general-purpose"}}])
    return text_reply("The subagent says all clear.")


@pytest.mark.cc_cell(feature="subagent attribution", format="anthropic", upstream="anthropic")
def test_a_subagent_s_requests_are_attributed(claude: Claude, stack: Stack,
                                              fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply(*[script] * 6)
    out = claude.run(stack.url, "Ask a subagent to check the repository.", "--model",
                     "claude-sonnet-4-6").assert_success()
    assert out["result"] == "The subagent says all clear."
    sent = fake_upstream.messages_requests
    agents = {r.headers.get("x-claude-code-agent-id") for r in sent} - {None}
    assert len(agents) == 1, [dict(r.headers) for r in sent]
    [agent] = agents
    exchanges = stack.probe.wait(len(sent))
    assert {x.agent_id for x in exchanges} == {None, agent}
    records = stack.audit_records(len(exchanges))
    assert sorted({str(r["agent_id"]) for r in records}) == sorted({"None", agent})


@pytest.mark.cc_cell(feature="subagent attribution", format="anthropic", upstream="openai")
def test_a_rule_sends_subagents_elsewhere(claude: Claude, subagent_stack: Stack,
                                          fake_upstream: FakeUpstream,
                                          openai_upstream: OpenAIUpstream) -> None:
    # match = { agent = "*" }: the subagent's requests go to the OpenAI upstream, the main
    # agent's to Anthropic.
    fake_upstream.reply(*[script] * 6)
    openai_upstream.reply(*[ChatReply(text="The subagent looked: all clear.")] * 4)
    out = claude.run(subagent_stack.url, "Ask a subagent to check the repository.",
                     "--model", "claude-sonnet-4-6").assert_success()
    assert out["result"] == "The subagent says all clear."
    assert openai_upstream.requests  # the subagent's turns
    assert not [r for r in fake_upstream.messages_requests
                if r.headers.get("x-claude-code-agent-id")]
    exchanges = subagent_stack.probe.wait(len(fake_upstream.messages_requests) +
                                          len(openai_upstream.requests))
    routes = {(x.agent_id is not None, x.upstream.name if x.upstream else None,
               x.annotations.get("route")) for x in exchanges}
    assert routes == {(False, "anthropic", "default"), (True, "openai", "subagents")}
