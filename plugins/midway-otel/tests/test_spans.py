"""The span and metrics of a request, read from the SDK's in-memory exporters."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import midway_otel
from midway import Retry, hookimpl
from midway.testing import Harness, Reply
from midway_otel import OTEL, OtelConfig, Telemetry

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
USAGE = {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 300,
         "cache_creation_input_tokens": 50}
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 64, "temperature": 0.5, "stream": True,
        "messages": [{"role": "user", "content": "my key is sk-ant-api03-" + "x" * 90}]}


class Memory:
    """The in-memory exporters put in place of the OTLP ones."""

    def __init__(self, harness: Harness, **config: Any) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        otel = harness.midway.services[OTEL]
        otel.telemetry = Telemetry.build(OtelConfig(**config), SimpleSpanProcessor(self.spans),
                                         self.reader)

    def by_name(self) -> dict[str, Any]:
        return {span.name: span for span in self.spans.get_finished_spans()}

    def metrics(self) -> dict[str, Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_streamed_request_is_one_genai_span_under_the_clients_trace() -> None:
    async def main() -> None:
        async with Harness(plugins=[midway_otel]) as h:
            memory = Memory(h)
            h.upstream.reply(Reply(stream=True, usage=USAGE, stop_reason="end_turn",
                                   model="claude-sonnet-4-6-20260101"))
            result = await h.request(BODY, headers={
                "traceparent": TRACEPARENT, "x-claude-code-session-id": "sess-1" + "a" * 500,
                "x-claude-code-agent-id": "agent-1", "x-claude-code-parent-agent-id": "main"})
            assert result.status == 200
            spans = memory.by_name()
            span = spans["chat claude-sonnet-4-6"]
            attrs = dict(span.attributes)
            assert span.kind is SpanKind.CLIENT
            assert format(span.context.trace_id, "032x") == TRACE_ID
            assert format(span.parent.span_id, "016x") == PARENT_ID
            assert attrs["gen_ai.operation.name"] == "chat"
            assert attrs["gen_ai.provider.name"] == "anthropic"
            assert attrs["gen_ai.request.model"] == "claude-sonnet-4-6"
            assert attrs["gen_ai.response.model"] == "claude-sonnet-4-6-20260101"
            assert attrs["gen_ai.response.id"].startswith("msg_")
            assert attrs["gen_ai.response.id"] == result.exchange.response_id
            assert attrs["gen_ai.response.finish_reasons"] == ("end_turn",)
            # Anthropic's definition: input + cache read + cache creation
            assert attrs["gen_ai.usage.input_tokens"] == 360
            assert attrs["gen_ai.usage.output_tokens"] == 7
            assert attrs["gen_ai.usage.cache_read.input_tokens"] == 300
            assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 50
            assert attrs["gen_ai.request.temperature"] == 0.5
            assert attrs["gen_ai.request.max_tokens"] == 64
            assert attrs["server.address"] == "fake.invalid"
            session = "sess-1" + "a" * 122  # bounded to max_header_value
            assert attrs["gen_ai.conversation.id"] == session
            assert attrs["midway.claude_code.session_id"] == session
            assert attrs["midway.claude_code.agent_id"] == "agent-1"
            assert attrs["midway.claude_code.parent_agent_id"] == "main"
            assert attrs["midway.principal.id"] == result.exchange.principal.id
            assert "error.type" not in attrs
            # content is off by default
            assert not any(k.startswith(("gen_ai.input", "gen_ai.output", "gen_ai.system"))
                           for k in attrs)
            assert "sk-ant" not in repr(attrs)
            assert 0 < attrs["gen_ai.response.time_to_first_chunk"] <= (
                span.end_time - span.start_time) / 1e9
            [event] = span.events
            assert event.name == "gen_ai.first_chunk"
            assert span.start_time < event.timestamp <= span.end_time
            attempt = spans["attempt 1 default"]
            assert attempt.parent.span_id == span.context.span_id
            assert attempt.attributes["http.response.status_code"] == 200
            assert (attempt.attributes["server.address"], attempt.attributes["server.port"]) \
                == ("fake.invalid", 80)

            metrics = memory.metrics()
            tokens = metrics["gen_ai.client.token.usage"]
            assert tokens.unit == "{token}"
            points = {p.attributes["gen_ai.token.type"]: p for p in tokens.data.data_points}
            assert points["input"].sum == 360 and points["output"].sum == 7
            assert points["input"].explicit_bounds[:3] == (1, 4, 16)
            assert points["input"].attributes["gen_ai.request.model"] == "claude-sonnet-4-6"
            # nothing unbounded on a metric
            assert "gen_ai.response.id" not in points["input"].attributes
            assert "midway.principal.id" not in points["input"].attributes
            duration = metrics["gen_ai.client.operation.duration"]
            assert duration.unit == "s"
            assert duration.data.data_points[0].explicit_bounds[0] == 0.01
            ttfc = metrics["gen_ai.client.operation.time_to_first_chunk"]
            assert ttfc.unit == "s" and ttfc.data.data_points[0].count == 1
    run(main())


class RetryOverloaded:
    """Retries a 529 on the same upstream, as the router does."""

    @hookimpl
    def upstream_response(self, exchange: Any, attempt: Any) -> Retry | None:
        return Retry(reason="overloaded") if attempt.status == 529 else None


def test_each_upstream_attempt_is_a_child_span() -> None:
    async def main() -> None:
        async with Harness(plugins=[midway_otel, RetryOverloaded()]) as h:
            memory = Memory(h)
            h.upstream.reply(Reply(status=529, error_type="overloaded_error"),
                             Reply(stream=False))
            result = await h.request()
            assert result.status == 200
            spans = memory.by_name()
            chat = spans["chat claude-sonnet-4-6"]
            first, second = spans["attempt 1 default"], spans["attempt 2 default"]
            assert first.parent.span_id == second.parent.span_id == chat.context.span_id
            assert first.attributes["http.response.status_code"] == 529
            assert first.attributes["midway.attempt.retried"] is True
            assert first.status.status_code is StatusCode.ERROR
            assert second.attributes["http.response.status_code"] == 200
            assert chat.status.status_code is StatusCode.UNSET
            assert first.end_time <= second.start_time
            assert chat.start_time <= first.start_time and second.end_time <= chat.end_time
            # a JSON answer: no first-chunk event, no time-to-first-chunk point
            assert not chat.events
            assert "gen_ai.client.operation.time_to_first_chunk" not in memory.metrics()
    run(main())


def test_a_failed_request_carries_error_type() -> None:
    async def main() -> None:
        async with Harness(plugins=[midway_otel]) as h:
            memory = Memory(h)
            h.upstream.reply(Reply(status=400, error_type="invalid_request_error"))
            result = await h.request()
            assert result.status == 400
            span = memory.by_name()["chat claude-sonnet-4-6"]
            assert span.attributes["error.type"] == "invalid_request_error"
            assert span.status.status_code is StatusCode.ERROR
            [point] = memory.metrics()["gen_ai.client.operation.duration"].data.data_points
            assert point.attributes["error.type"] == "invalid_request_error"
    run(main())


def test_a_bad_traceparent_starts_a_new_trace() -> None:
    async def main() -> None:
        async with Harness(plugins=[midway_otel]) as h:
            memory = Memory(h)
            await h.request(headers={"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"})
            await h.request(headers={"traceparent": "garbage" * 200})
            spans = [s for s in memory.spans.get_finished_spans() if s.name.startswith("chat")]
            assert len(spans) == 2 and all(s.parent is None for s in spans)
    run(main())


def test_installed_without_an_endpoint_it_does_nothing_and_says_so() -> None:
    async def main() -> None:
        async with Harness(plugins=[midway_otel]) as h:
            otel = h.midway.services[OTEL]
            assert otel.telemetry is None and otel.relay is None
            assert midway_otel.describe(h.midway) == "no endpoint set: exports nothing"
            result = await h.request()
            assert result.status == 200
            # with the relay off, Claude Code's telemetry is refused, never sent upstream
            sent = len(h.upstream.requests)
            refused = await h.request(b"\x00", path="/v1/logs")
            assert refused.status == 404 and len(h.upstream.requests) == sent
    run(main())


def test_unauthenticated_requests_and_made_up_models_stay_bounded() -> None:
    async def main() -> None:
        async with Harness(plugins=[midway_otel],
                           client_keys=[{"key": "mw-good-0123456789", "name": "a"}]) as h:
            memory = Memory(h)
            bad = await h.request({"model": "x-1", "max_tokens": 1, "messages": []},
                                  headers={"x-api-key": "mw-wrong"})
            assert bad.status == 401
            assert memory.spans.get_finished_spans() == ()
            telemetry = h.midway.services[OTEL].telemetry
            telemetry._models.update(f"m{i}" for i in range(200))
            h.upstream.reply(Reply(stream=False))
            await h.request({"model": "made-up-model", "max_tokens": 8, "messages": [
                {"role": "user", "content": "hi"}]}, headers={"x-api-key": "mw-good-0123456789"})
            [point] = memory.metrics()["gen_ai.client.operation.duration"].data.data_points
            assert point.attributes["gen_ai.request.model"] == "_OTHER"
            [span] = [s for s in memory.spans.get_finished_spans() if s.name.startswith("chat")]
            assert span.attributes["gen_ai.request.model"] == "made-up-model"
    run(main())
