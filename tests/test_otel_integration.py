"""midway-otel beside the other plugins: prompt and answer content on spans only when asked,
redacted with audit's rules; billing's cost on the span; the router's fallback as a second
attempt span."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import midway_billing
import midway_otel
import midway_router
from midway.config import ConfigError
from midway.testing import Harness, Reply
from midway_otel import OTEL, Telemetry

SECRET = "sk-ant-api03-" + "Q" * 93
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
        "system": [{"type": "text", "text": "Be brief. Internal token: ticket-7731"}],
        "messages": [{"role": "user", "content": f"deploy with {SECRET}"}]}


def _spans(h: Harness) -> InMemorySpanExporter:
    """Put the in-memory exporter in place of the OTLP one, keeping the configured content."""
    otel = h.midway.services[OTEL]
    exporter = InMemorySpanExporter()
    content = otel.telemetry.content if otel.telemetry is not None else None
    if otel.telemetry is not None:
        otel.telemetry.shutdown()  # nothing recorded yet: nothing is sent
    otel.telemetry = Telemetry.build(otel.config, SimpleSpanProcessor(exporter),
                                     InMemoryMetricReader(), content)
    return exporter


def _chat(exporter: InMemorySpanExporter) -> dict[str, Any]:
    [span] = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    return dict(span.attributes)


@pytest.mark.parametrize("capture", [False, True])
def test_content_only_when_asked_and_redacted_with_audits_rules(capture: bool) -> None:
    config = {"otel": {"endpoint": "http://127.0.0.1:9", "capture_content": capture,
                       "metrics": False},
              "audit": {"redact_patterns": {"ticket": r"ticket-\d+"}}}

    async def main() -> None:
        async with Harness(plugins=[midway_billing, midway_otel], config=config) as h:
            exporter = _spans(h)
            h.upstream.reply(Reply(stream=True, content=[
                {"type": "text", "text": f"done, I used {SECRET}"}]))
            assert (await h.request(BODY)).status == 200
            attrs = _chat(exporter)
            assert float(attrs["midway.cost_usd"]) > 0  # billing's annotation
            text = repr(attrs)
            assert SECRET not in text and "ticket-7731" not in text
            if not capture:
                assert "gen_ai.input.messages" not in attrs
                return
            assert "deploy with [REDACTED:" in attrs["gen_ai.input.messages"]
            assert "[REDACTED:ticket]" in attrs["gen_ai.system_instructions"]
            assert "done, I used [REDACTED:" in attrs["gen_ai.output.messages"]
    asyncio.run(main())


def test_capture_without_audit_rules_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "midway_audit.redact", None)  # as if not installed

    async def main() -> None:
        h = Harness(plugins=[midway_otel], config={"otel": {
            "endpoint": "http://127.0.0.1:9", "capture_content": True}})
        with pytest.raises(ConfigError, match="needs midway-audit installed"):
            await h.start()
    asyncio.run(main())


def test_a_router_fallback_is_a_second_attempt_span() -> None:
    config = {"otel": {"endpoint": "http://127.0.0.1:9"}, "router": {
        "upstreams": [{"name": "primary", "url": "http://primary.invalid", "keys": ["sk-ant-p"]},
                      {"name": "backup", "url": "http://backup.invalid", "keys": ["sk-ant-b"]}],
        "rules": [{"name": "chain", "match": {"model": "claude-*"}, "target": "primary",
                   "fallback": ["backup"]}],
        "backoff_base": 0.0}}

    async def main() -> None:
        async with Harness(plugins=[midway_router, midway_otel], config=config) as h:
            exporter = _spans(h)
            h.upstream.reply(Reply(status=529, error_type="overloaded_error"), Reply())
            assert (await h.request()).status == 200
            spans = {s.name: s for s in exporter.get_finished_spans()}
            chat = spans["chat claude-sonnet-4-6"]
            first, second = spans["attempt 1 primary"], spans["attempt 2 backup"]
            assert first.parent.span_id == second.parent.span_id == chat.context.span_id
            assert first.attributes["http.response.status_code"] == 529
            assert first.attributes["server.address"] == "primary.invalid"
            assert first.attributes["error.type"] == "529"
            assert second.attributes["server.address"] == "backup.invalid"
            assert chat.attributes["server.address"] == "backup.invalid"
            assert chat.attributes["midway.route"] == "chain"
    asyncio.run(main())
