"""Upstream errors reach Claude Code so that it behaves exactly as it does without midway.

Each scenario runs twice against the same scripted upstream: Claude Code straight to the fake,
then Claude Code through midway (every plugin on). Claude Code's visible result, the number of
requests the upstream received and the retry pacing must be the same.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import attrs
import pytest
from cc_support import COST, Claude, ClaudeRun, Stack, messages_since, text_reply, visible

from midway.testing import FakeUpstream, RecordedRequest, Reply

RECOVERED = "Recovered after the error."
TOO_LONG = "prompt is too long: 250123 tokens > 200000 maximum"
# Wording Claude Code has no special case for (a tool-schema message, for one, makes it retry
# with other tools), so it prints it as it came.
INVALID = "metadata.tag: conformance check 7f3a failed (the upstream's own wording, ünïcode)"
RATE_LIMITED = "Number of request tokens has exceeded your per-minute rate limit"


@attrs.define
class Scenario:
    replies: Callable[[], list[Reply]]
    requests: int | None  # how many /v1/messages the upstream receives (None: as direct)
    min_gap: float = 0.0  # seconds Claude Code waits before its retry
    retry_streams: bool = True  # whether Claude Code's retry asks for a stream again


SCENARIOS = {
    "overloaded-529-then-success": Scenario(
        lambda: [Reply(status=529, error_type="overloaded_error", error_message="Overloaded"),
                 text_reply(RECOVERED)], requests=2),
    "rate-limited-429-retry-after": Scenario(
        lambda: [Reply(status=429, error_type="rate_limit_error", error_message=RATE_LIMITED,
                       headers={"retry-after": "1"}),
                 text_reply(RECOVERED)], requests=2, min_gap=0.9),
    "error-event-mid-stream": Scenario(
        lambda: [text_reply("This answer breaks off", error_after=4), text_reply(RECOVERED)],
        requests=2, retry_streams=False),
    # Claude Code answers a 400 by retrying with fewer optional features (betas, thinking
    # display) before it gives up: the upstream refuses every one of them.
    "invalid-request-400": Scenario(
        lambda: [Reply(status=400, error_type="invalid_request_error", error_message=INVALID)
                 for _ in range(12)], requests=None),
    # Claude Code reads the numbers out of this wording: a rewritten body would lose them.
    "prompt-too-long-400": Scenario(
        lambda: [Reply(status=400, error_type="invalid_request_error", error_message=TOO_LONG),
                 text_reply("must never be asked for")], requests=1),
}


def _run(claude: Claude, fake: FakeUpstream, base_url: str, scenario: Scenario
         ) -> tuple[ClaudeRun, list[RecordedRequest]]:
    fake.fake.queue.clear()  # replies left over from the direct run must not leak
    start = len(fake.requests)
    fake.reply(*scenario.replies())
    run = claude.run(base_url, "Answer the question", "--model", "claude-sonnet-4-6")
    return run, messages_since(fake.requests, start)


@pytest.mark.cc_cell(feature=("errors", COST), format="anthropic", upstream="anthropic")
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_error_behaves_as_without_midway(name: str, claude: Claude, stack: Stack,
                                         fake_upstream: FakeUpstream) -> None:
    scenario = SCENARIOS[name]
    direct, direct_requests = _run(claude, fake_upstream, fake_upstream.url, scenario)
    run, requests = _run(claude, fake_upstream, stack.url, scenario)

    out = run.output
    assert visible(out) == visible(direct.output)
    assert run.returncode == direct.returncode
    assert len(requests) == len(direct_requests) == (scenario.requests or len(direct_requests))
    if scenario.requests is None:
        # Claude Code's fallbacks, request by request, are what they are without midway.
        assert [r.headers.get("anthropic-beta") for r in requests] == \
            [r.headers.get("anthropic-beta") for r in direct_requests]
    if scenario.requests == 2:
        assert out["is_error"] is False and out["result"] == RECOVERED
        # The retry is the same request again, paced as Claude Code paces it without midway
        # (after a broken stream, Claude Code asks again without streaming).
        first, retry = requests[0].json, requests[1].json
        assert retry.pop("stream") is scenario.retry_streams
        assert first.pop("stream") is True
        assert [r.json.get("stream") for r in direct_requests] == [True, scenario.retry_streams]
        assert retry == first
        gap = requests[1].received_at - requests[0].received_at
        assert gap >= scenario.min_gap
    else:
        assert out["is_error"] is True
        if name == "invalid-request-400":
            # The upstream's own message, printed verbatim once Claude Code gives up.
            assert out["result"] == f"API Error: 400 {INVALID}"
            assert out["api_error_status"] == 400
        else:
            assert out["result"].startswith("Prompt is too long")
            assert "250123 tokens" in out["result"] and "200000" in out["result"]

    exchanges = stack.probe.wait(len(requests))
    statuses = [x.status for x in exchanges]
    # One audit record per request, failed ones included.
    records = stack.audit_records(len(requests))
    assert [(r["id"], r["status"]) for r in records] == [(x.id, x.status) for x in exchanges]
    # Refused requests cost nothing; the answer that completed costs what Claude Code says.
    # (What a stream broken by `event: error` costs is billing's policy, not asserted here.)
    assert all(x.annotations["cost_usd"] == "0" for x in exchanges if x.status != 200)
    completed = Decimal(exchanges[-1].annotations["cost_usd"])
    assert abs(completed - Decimal(str(out["total_cost_usd"]))) < Decimal("1e-12")
    if name == "overloaded-529-then-success":
        assert statuses == [529, 200]
    elif name == "rate-limited-429-retry-after":
        assert statuses == [429, 200]
    elif name == "error-event-mid-stream":
        assert statuses == [200, 200]
        assert exchanges[0].error_type == "overloaded_error"
        assert exchanges[1].error_type is None and exchanges[1].stop_reason == "end_turn"
    else:  # the 400s
        assert statuses == [400] * len(requests)
        assert {x.error_type for x in exchanges} == {"invalid_request_error"}
