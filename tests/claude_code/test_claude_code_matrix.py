"""The cells of the compatibility matrix no other module covers: each client format Claude Code
speaks (Anthropic, Bedrock, Vertex) x each upstream behind midway (Anthropic, an
OpenAI-compatible vendor, Bedrock, Vertex), with the real CLI where Claude Code is the client.

Per cell: a text turn arrives streamed at the upstream in its own wire format; a tool loop with
signed thinking completes; count_tokens is answered; a throttled or overloaded answer is retried
by Claude Code and recovers; and midway's cost equals Claude Code's own. The team setup
throughout: Claude Code presents a midway key, midway holds the upstream's credentials.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import orjson
import pytest
from cc_support import (
    COST,
    FORMATS,
    MARKER,
    MODELS,
    SIGNATURE,
    TEAM_KEY,
    THINKING,
    UPSTREAM_KEY,
    Claude,
    ClaudeRun,
    Stack,
    text_reply,
    tool_loop_replies,
)
from fake_bedrock import BedrockReply, FakeBedrockServer
from fake_vertex import FakeGoogle
from openai_upstream import ChatReply, OpenAIUpstream

from midway.testing import FakeUpstream, Reply, wait_for

USAGE = {"input_tokens": 1500, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
         "output_tokens": 40}
RECOVERED = "Recovered after the error."
QUESTION = [{"role": "user", "content": "How many tokens is this?"}]


@attrs.define
class Vendor:
    """One upstream behind midway: how to script its answers and read what it received.

    ``inference``: the (path, body) of each inference request it received, in order;
    ``streamed``: whether such a request asked for a stream, in the vendor's terms.
    """

    stack: Stack
    text: Callable[[str], None]
    tool_loop: Callable[[], None]
    error_then: Callable[[str], None]
    inference: Callable[[], list[tuple[str, dict[str, Any]]]]
    streamed: Callable[[str, dict[str, Any]], bool]
    counted: Callable[[], list[str]]  # paths of the count requests it received
    credential_ok: Callable[[], bool]  # every request carried midway's credential for it


def _anthropic(stack: Stack, fake: FakeUpstream) -> Vendor:
    def inference() -> list[tuple[str, dict[str, Any]]]:
        return [(r.path, r.json) for r in fake.messages_requests]

    return Vendor(
        stack, text=lambda t: fake.reply(text_reply(t, usage=USAGE)),
        tool_loop=lambda: fake.reply(*tool_loop_replies()),
        error_then=lambda t: fake.reply(
            Reply(status=529, error_type="overloaded_error", error_message="Overloaded"),
            text_reply(t, usage=USAGE)),
        inference=inference, streamed=lambda _, body: body.get("stream") is True,
        counted=lambda: [r.path for r in fake.requests
                         if r.path == "/v1/messages/count_tokens"],
        credential_ok=lambda: all(r.headers.get("x-api-key") == UPSTREAM_KEY
                                  for r in fake.requests))


def _openai(stack: Stack, server: OpenAIUpstream) -> Vendor:
    return Vendor(
        stack, text=lambda t: server.reply(ChatReply(text=t)),
        tool_loop=lambda: server.reply(
            ChatReply(tool="Bash", arguments={"command": f"echo {MARKER}",
                                              "description": "Print the marker"}),
            ChatReply(text=f"The command printed {MARKER}.")),
        error_then=lambda t: server.reply(
            ChatReply(status=429, headers={"retry-after": "1"}), ChatReply(text=t)),
        inference=lambda: [(r.path, r.body) for r in server.requests],
        streamed=lambda _, body: body.get("stream") is True,
        counted=lambda: [],
        credential_ok=lambda: all(r.headers.get("authorization") == "Bearer sk-openai-conformance"
                                  for r in server.requests))


def _bedrock(stack: Stack, server: FakeBedrockServer) -> Vendor:
    def tool_loop() -> None:
        one, two = tool_loop_replies()
        server.reply(BedrockReply(content=one.content, stop_reason="tool_use",
                                  usage=one.usage or USAGE),
                     BedrockReply(content=two.content, usage=two.usage or USAGE))

    return Vendor(
        stack, text=lambda t: server.reply(BedrockReply(content=[{"type": "text", "text": t}],
                                                        usage=USAGE)),
        tool_loop=tool_loop,
        error_then=lambda t: server.reply(
            BedrockReply(status=429, error_type="ThrottlingException",
                         error_message="Too many requests, please wait before trying again."),
            BedrockReply(content=[{"type": "text", "text": t}], usage=USAGE)),
        inference=lambda: [(r.path, r.body) for r in server.requests
                           if not r.path.endswith("/count-tokens")],
        streamed=lambda path, _: path.endswith("/invoke-with-response-stream"),
        counted=lambda: [r.path for r in server.requests if r.path.endswith("/count-tokens")],
        # SigV4, recomputed by the fake with midway's AWS credentials
        credential_ok=lambda: all(r.signature_ok for r in server.requests))


def _vertex(stack: Stack, google: FakeGoogle) -> Vendor:
    def error_then(text: str) -> None:
        google.errors.append((429, {"code": 429, "status": "RESOURCE_EXHAUSTED", "message":
                                    "Quota exceeded for aiplatform.googleapis.com/"
                                    "online_prediction_requests"}))
        google.anthropic.reply(text_reply(text, usage=USAGE))

    return Vendor(
        stack, text=lambda t: google.anthropic.reply(text_reply(t, usage=USAGE)),
        tool_loop=lambda: google.anthropic.reply(*tool_loop_replies()),
        error_then=error_then,
        inference=lambda: [(r.path, r.body) for r in google.requests
                           if "count-tokens" not in r.path],
        streamed=lambda path, _: path.endswith(":streamRawPredict"),
        counted=lambda: [r.path for r in google.requests if "count-tokens" in r.path],
        # a token the fake token endpoint issued to midway's service account
        credential_ok=lambda: all(r.headers["authorization"].removeprefix("Bearer ")
                                  in google.issued for r in google.requests))


@pytest.fixture
def vendor(request: pytest.FixtureRequest) -> Vendor:
    """The cell's upstream (the test's ``upstream`` parameter), midway in front of it."""
    upstream = request.node.callspec.params["cell"][1]
    if upstream == "anthropic":
        return _anthropic(request.getfixturevalue("anthropic_stack"),
                          request.getfixturevalue("fake_upstream"))
    if upstream == "openai":
        return _openai(request.getfixturevalue("openai_stack"),
                       request.getfixturevalue("openai_upstream"))
    if upstream == "bedrock":
        return _bedrock(request.getfixturevalue("bedrock_stack"),
                        request.getfixturevalue("bedrock"))
    return _vertex(request.getfixturevalue("vertex_stack"), request.getfixturevalue("google"))


def cells(feature: str | tuple[str, ...], *pairs: tuple[str, str]) -> Any:
    """The parametrisation over (format, upstream) ``pairs``, each marked as its cell."""
    return pytest.mark.parametrize("cell", [
        pytest.param(pair, id=f"{pair[0]}-to-{pair[1]}",
                     marks=pytest.mark.cc_cell(feature=feature, format=pair[0],
                                               upstream=pair[1]))
        for pair in pairs])


def run_claude(claude: Claude, stack: Stack, fmt: str, prompt: str, *args: str) -> ClaudeRun:
    """Claude Code in client format ``fmt``, presenting the team's midway key."""
    if fmt == "anthropic":
        return claude.run(stack.url, prompt, "--model", MODELS[fmt], *args,
                          env={"ANTHROPIC_AUTH_TOKEN": TEAM_KEY["key"]})
    env = {**FORMATS[fmt](stack.url), "ANTHROPIC_CUSTOM_HEADERS": f"x-api-key: {TEAM_KEY['key']}"}
    return claude.run(stack.url, prompt, "--model", MODELS[fmt], *args, env=env,
                      unset=("ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"))


def assert_billed_as_claude_code(stack: Stack, fmt: str, upstream: str, out: dict[str, Any],
                                 requests: int) -> list[int]:
    """Every request was the team's, and (Claude upstreams) midway's cost is Claude Code's;
    the statuses of midway's answers, the last one a success."""
    def mine() -> list[Any]:
        return [e for e in stack.probe.messages() if e.client_format == fmt]

    wait_for(lambda: len(mine()) >= requests and mine()[-1].status == 200, timeout=30)
    seen = mine()
    assert all(e.principal.name == "alice" for e in seen)
    if upstream != "openai":  # the vendor's model at the vendor's price: not Claude Code's
        assert all(e.annotations["cost_usd"] == "0" for e in seen if e.status != 200)
        billed = sum(Decimal(e.annotations["cost_usd"]) for e in seen)
        assert billed > 0
        assert abs(billed - Decimal(str(out["total_cost_usd"]))) < Decimal("1e-9")
    return [e.status for e in seen]


OTHER_CELLS = (("anthropic", "openai"), ("anthropic", "bedrock"), ("anthropic", "vertex"),
               ("bedrock", "bedrock"), ("bedrock", "anthropic"), ("vertex", "vertex"),
               ("vertex", "anthropic"))


@cells(("text turn", "streaming", COST), *OTHER_CELLS)
def test_a_text_turn_streams_through(claude: Claude, vendor: Vendor, cell: tuple[str, str]
                                     ) -> None:
    fmt, upstream = cell
    vendor.text("Hello through midway.")
    out = run_claude(claude, vendor.stack, fmt, "Say hello").assert_success()
    assert out["result"] == "Hello through midway." and out["num_turns"] == 1
    [(path, body)] = vendor.inference()
    assert vendor.streamed(path, body), (path, body)
    assert vendor.credential_ok()
    assert assert_billed_as_claude_code(vendor.stack, fmt, upstream, out, 1) == [200]


@cells(("tool loop", "signed thinking", COST), ("anthropic", "bedrock"), ("anthropic", "vertex"))
def test_a_tool_loop_with_signed_thinking(claude: Claude, vendor: Vendor,
                                          cell: tuple[str, str]) -> None:
    fmt, upstream = cell
    vendor.tool_loop()
    out = run_claude(claude, vendor.stack, fmt, "Print the marker",
                     "--allowedTools", "Bash(echo:*)").assert_success()
    assert out["result"] == f"The command printed {MARKER}." and out["num_turns"] == 2
    first, second = vendor.inference()
    assert all(vendor.streamed(*sent) for sent in (first, second))
    assert vendor.credential_ok()
    # The signed thinking block went back to the vendor untouched, and the tool's result too.
    assistant, user = second[1]["messages"][-2:]
    assert assistant["content"][0] == {"type": "thinking", "thinking": THINKING,
                                       "signature": SIGNATURE}
    assert MARKER in str([b for b in user["content"] if b.get("type") == "tool_result"])
    assert assert_billed_as_claude_code(vendor.stack, fmt, upstream, out, 2) == [200, 200]


def count_tokens(stack: Stack, fmt: str) -> httpx.Response:
    """count_tokens in client format ``fmt``, as Claude Code's SDK sends it."""
    key = {"x-api-key": TEAM_KEY["key"]}
    if fmt == "anthropic":
        return httpx.post(f"{stack.url}/v1/messages/count_tokens?beta=true", headers={
            **key, "anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"},
            json={"model": MODELS[fmt], "messages": QUESTION}, timeout=30)
    if fmt == "bedrock":
        inner = orjson.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 1,
                              "messages": QUESTION})
        return httpx.post(f"{stack.url}/model/{quote(MODELS[fmt], safe='')}/count-tokens",
                          headers=key, timeout=30, json={
                              "input": {"invokeModel": {"body": base64.b64encode(inner).decode()}}})
    return httpx.post(f"{stack.url}/v1/projects/cc-project/locations/us-east5/publishers/"
                      "anthropic/models/count-tokens:rawPredict", headers=key, timeout=30,
                      json={"anthropic_version": "vertex-2023-10-16", "model": MODELS[fmt],
                            "messages": QUESTION})


@cells("count_tokens", *OTHER_CELLS)
def test_count_tokens_in_the_client_format(vendor: Vendor, cell: tuple[str, str]) -> None:
    fmt, upstream = cell
    answer = count_tokens(vendor.stack, fmt)
    if upstream == "openai":
        # No token counting at an OpenAI-compatible vendor: a clean Anthropic error (Claude
        # Code's count is best effort and falls back to its own estimate).
        assert answer.status_code == 404, answer.text
        assert answer.json()["type"] == "error"
        assert answer.json()["error"]["type"] == "not_found_error"
        assert vendor.inference() == []
        return
    assert answer.status_code == 200, answer.text
    field = "inputTokens" if fmt == "bedrock" else "input_tokens"
    assert set(answer.json()) == {field} and answer.json()[field] > 0
    assert len(vendor.counted()) == 1 and vendor.inference() == []
    assert vendor.credential_ok()
    wait_for(lambda: len(vendor.stack.probe.exchanges) == 1)
    [seen] = vendor.stack.probe.exchanges
    assert (seen.status, seen.client_format, seen.principal.name) == (200, fmt, "alice")
    assert seen.annotations["cost_usd"] == "0"  # counting tokens is free


@cells(("errors", COST), *OTHER_CELLS)
def test_a_throttled_answer_is_retried_and_recovers(claude: Claude, vendor: Vendor,
                                                    cell: tuple[str, str]) -> None:
    fmt, upstream = cell
    vendor.error_then(RECOVERED)
    out = run_claude(claude, vendor.stack, fmt, "Answer the question").assert_success()
    assert out["result"] == RECOVERED
    first, retry = vendor.inference()
    assert first[1] == retry[1]  # the same request again
    statuses = assert_billed_as_claude_code(vendor.stack, fmt, upstream, out, 2)
    refused = 529 if upstream == "anthropic" else 429
    # midway's router rests the pooled key the vendor refused: a retry that comes
    # sooner than the rest ends is answered by midway itself with retry-after, as what the
    # vendor said (529 overloaded after a 529, 429 after a throttle), and Claude Code waits.
    assert statuses[0] == refused and statuses[-1] == 200
    assert set(statuses[1:-1]) <= {refused}, statuses
