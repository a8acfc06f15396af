"""Claude Code's tool loop through midway with midway-otel: midway's GenAI span of each turn is
a child of Claude Code's own ``claude_code.llm_request`` span (Claude Code propagates its
``traceparent`` with CLAUDE_CODE_PROPAGATE_TRACEPARENT=1), and Claude Code's own telemetry
reaches the collector through midway's OTLP relay, stamped with the midway principal."""

from __future__ import annotations

from pathlib import Path

import pytest
from cc_support import MARKER, TEAM_KEY, UPSTREAM_KEY, Claude, tool_loop_replies

import midway_otel
from midway.testing import FakeUpstream, start_midway
from midway_otel.testing import Receiver, attributes


@pytest.mark.cc_cell(feature="OpenTelemetry trace", format="anthropic", upstream="anthropic")
def test_each_turn_is_a_child_of_claude_codes_span(claude: Claude, fake_upstream: FakeUpstream,
                                                    tmp_path: Path) -> None:
    receiver = Receiver().start()
    midway = start_midway(tmp_path / "midway", fake_upstream.url, plugins=[midway_otel],
                          config={"otel": {"endpoint": receiver.http_url, "relay": True},
                                  "midway": {"client_keys": [TEAM_KEY],
                                             "upstream_api_key": UPSTREAM_KEY}})
    try:
        fake_upstream.reply(*tool_loop_replies())
        run = claude.run(midway.url, "Print the marker", "--allowedTools", "Bash(echo:*)",
                         "--model", "claude-sonnet-4-6", env={
                             "ANTHROPIC_AUTH_TOKEN": TEAM_KEY["key"],
                             "CLAUDE_CODE_ENABLE_TELEMETRY": "1",
                             "CLAUDE_CODE_ENHANCED_TELEMETRY_BETA": "1",
                             "CLAUDE_CODE_PROPAGATE_TRACEPARENT": "1",
                             "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp",
                             "OTEL_LOGS_EXPORTER": "otlp",
                             "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                             "OTEL_EXPORTER_OTLP_ENDPOINT": midway.url,
                             "OTEL_EXPORTER_OTLP_HEADERS": f"x-api-key={TEAM_KEY['key']}"})
        out = run.assert_success()
        assert MARKER in out["result"] and out["num_turns"] == 2
        midway.stop()  # flushes midway's own spans and metrics
        receiver.wait("traces", 2)
        receiver.wait("metrics", 2)
        receiver.wait("logs")
    finally:
        midway.stop()
        receiver.stop()

    spans = receiver.spans()
    turns = sorted((s for s, r in spans if s.name == "chat claude-sonnet-4-6"),
                   key=lambda s: s.start_time_unix_nano)
    llm_requests = {s.span_id: (s, r) for s, r in spans if s.name == "claude_code.llm_request"}
    assert len(turns) == 2 and len(llm_requests) == 2
    for turn, reason in zip(turns, ("tool_use", "end_turn"), strict=True):
        parent, resource = llm_requests[turn.parent_span_id]  # Claude Code's span of this turn
        assert turn.trace_id == parent.trace_id
        a = attributes(turn.attributes)
        assert a["gen_ai.response.finish_reasons"] == (reason,)
        assert a["gen_ai.conversation.id"] == out["session_id"]
        assert a["midway.principal.name"] == "alice"
        assert a["gen_ai.usage.input_tokens"] in (1200, 1300)
        # Claude Code's span came through the relay, attributed by midway
        assert resource["midway.principal.name"] == "alice"
        assert resource["midway.principal.team"] == "search"
    for kind in ("logs", "metrics", "traces"):
        for _, headers in receiver.received[kind]:
            assert TEAM_KEY["key"] not in repr(headers)
    metrics = receiver.metrics()
    assert metrics["gen_ai.client.token.usage"].unit == "{token}"
    assert metrics["gen_ai.client.operation.duration"].unit == "s"
