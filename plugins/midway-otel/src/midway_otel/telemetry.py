"""One running midway's tracer and meter, and the span and metrics of each finished request.

Spans are built when the request has finished (``post_response``), with the times the core
measured: nothing is held open across the relay, and retries and fallbacks show as one child
span per upstream attempt.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from midway import Exchange
from midway.annotations import CACHE, COST_USD, ROUTE
from midway_otel import semconv as sc
from midway_otel.config import OtelConfig
from midway_otel.content import ContentCapture
from midway_otel.outage import (
    MetricExporterLogged,
    Outage,
    SpanExporterLogged,
    quiet_sdk_exporters,
)

_PROPAGATOR = TraceContextTextMapPropagator()
_SCOPE = "midway_otel"
# Distinct request models kept as metric attributes: any client can name any model, and a
# metric series lives as long as the process.
MAX_METRIC_MODELS = 200
OTHER_MODEL = "_OTHER"


@attrs.define(eq=False)
class Telemetry:
    """Everything the plugin holds for one running midway."""

    config: OtelConfig
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    content: ContentCapture | None = None
    _tracer: trace.Tracer | None = attrs.field(init=False, default=None)
    _instruments: dict[str, Any] = attrs.field(init=False, factory=dict)
    _models: set[str] = attrs.field(init=False, factory=set)

    def __attrs_post_init__(self) -> None:
        if self.tracer_provider is not None:
            self._tracer = self.tracer_provider.get_tracer(_SCOPE, schema_url=sc.SCHEMA_URL)
        if self.meter_provider is not None:
            meter = self.meter_provider.get_meter(_SCOPE, schema_url=sc.SCHEMA_URL)
            self._instruments = {
                "tokens": meter.create_histogram(
                    sc.METRIC_TOKEN_USAGE, unit="{token}",
                    description="Number of input and output tokens used.",
                    explicit_bucket_boundaries_advisory=sc.TOKEN_BUCKETS),
                "duration": meter.create_histogram(
                    sc.METRIC_DURATION, unit="s", description="GenAI operation duration.",
                    explicit_bucket_boundaries_advisory=sc.SECONDS_BUCKETS),
                "ttfc": meter.create_histogram(
                    sc.METRIC_TTFC, unit="s",
                    description="Time to receive the first chunk of a streamed answer.",
                    explicit_bucket_boundaries_advisory=sc.SECONDS_BUCKETS),
            }

    @classmethod
    def build(cls, config: OtelConfig, span_processor: SpanProcessor | None,
              metric_reader: MetricReader | None,
              content: ContentCapture | None = None) -> Telemetry:
        # One instance id per process: with --workers N each worker exports its own
        # cumulative metrics, which a collector must not take for one series.
        resource = Resource.create({"service.name": config.service_name,
                                    "service.instance.id": uuid.uuid4().hex})
        tracer_provider = None
        if span_processor is not None:
            tracer_provider = TracerProvider(resource=resource)
            tracer_provider.add_span_processor(span_processor)
        meter_provider = None
        if metric_reader is not None:
            meter_provider = MeterProvider(resource=resource, metric_readers=[metric_reader])
        return cls(config, tracer_provider, meter_provider, content)

    @classmethod
    def from_config(cls, config: OtelConfig, content: ContentCapture | None) -> Telemetry:
        """OTLP exporters to ``config.endpoint`` (the caller checked it is set)."""
        quiet_sdk_exporters()
        outage = Outage(config.endpoint)
        processor = None
        if config.traces:
            processor = BatchSpanProcessor(SpanExporterLogged(_span_exporter(config), outage))
        reader = None
        if config.metrics:
            reader = PeriodicExportingMetricReader(
                MetricExporterLogged(_metric_exporter(config), outage),
                export_interval_millis=config.metric_interval * 1000,
                export_timeout_millis=config.timeout * 1000)
        return cls.build(config, processor, reader, content)

    def shutdown(self) -> None:
        """Flush and stop (blocking: exports what is pending)."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()

    # -- one request --------------------------------------------------------------------------

    def record(self, exchange: Exchange) -> None:
        """The span (with a child per attempt) and the metrics of one finished request."""
        model = exchange.model or ""
        attributes = self._attributes(exchange, model)
        if self._tracer is not None:
            self._span(exchange, model, attributes)
        if self._instruments:
            self._metrics(exchange, attributes)

    def _attributes(self, exchange: Exchange, model: str) -> dict[str, Any]:
        attributes: dict[str, Any] = {sc.OPERATION_NAME: sc.CHAT,
                                      sc.PROVIDER_NAME: sc.ANTHROPIC}
        if model:
            attributes[sc.REQUEST_MODEL] = model
        if exchange.response_model:
            attributes[sc.RESPONSE_MODEL] = exchange.response_model
        attempt = exchange.final_attempt
        if attempt is not None:
            attributes.update(_server(attempt.upstream.url))
        error = error_type(exchange)
        if error is not None:
            attributes[sc.ERROR_TYPE] = error
        return attributes

    def _span(self, exchange: Exchange, model: str, base: dict[str, Any]) -> None:
        assert self._tracer is not None
        attributes = dict(base)
        attributes.update(self._span_only(exchange))
        timings = exchange.timings
        start = _wall_ns(exchange, timings.started)
        end = start + int((timings.total_ms or 0.0) * 1e6)
        parent = _PROPAGATOR.extract(_carrier(exchange.request.headers))
        span = self._tracer.start_span(f"{sc.CHAT} {model}".strip(), context=parent,
                                       kind=SpanKind.CLIENT, attributes=attributes,
                                       start_time=start)
        if exchange.streaming and timings.ttfb_ms is not None:
            first = timings.ttfb_ms / 1000
            span.set_attribute(sc.RESPONSE_TTFC, first)
            span.add_event(sc.FIRST_CHUNK_EVENT, timestamp=start + int(timings.ttfb_ms * 1e6),
                           attributes={sc.RESPONSE_TTFC: first})
        if sc.ERROR_TYPE in attributes:
            span.set_status(Status(StatusCode.ERROR, exchange.error or None))
        child_context = trace.set_span_in_context(span)
        attempts = exchange.attempts
        for index, attempt in enumerate(attempts):
            a_start = _wall_ns(exchange, attempt.started)
            a_end = _wall_ns(exchange, attempts[index + 1].started) \
                if index + 1 < len(attempts) else end
            a_attrs: dict[str, Any] = {
                sc.ATTEMPT_NUMBER: attempt.number, sc.UPSTREAM_NAME: attempt.upstream.name,
                sc.ATTEMPT_RETRIED: attempt.retried, sc.HTTP_METHOD: "POST"}
            a_attrs.update(_server(attempt.upstream.url))
            if attempt.status is not None:
                a_attrs[sc.HTTP_STATUS] = attempt.status
            if attempt.upstream.model:
                a_attrs[sc.REQUEST_MODEL] = attempt.upstream.model
            failed = attempt.error is not None or (attempt.status or 0) >= 400
            if failed:
                a_attrs[sc.ERROR_TYPE] = (attempt.error_kind.value if attempt.error_kind
                                          else str(attempt.status))
            child = self._tracer.start_span(
                f"attempt {attempt.number} {attempt.upstream.name}", context=child_context,
                kind=SpanKind.CLIENT, attributes=a_attrs, start_time=a_start)
            if failed:
                child.set_status(Status(StatusCode.ERROR, attempt.error or None))
            child.end(end_time=max(a_end, a_start))
        span.end(end_time=end)

    def _span_only(self, exchange: Exchange) -> dict[str, Any]:
        """Attributes too fine-grained for metrics (ids, counts, identities)."""
        out: dict[str, Any] = {sc.EXCHANGE_ID: exchange.id}
        usage = exchange.usage
        if usage.seen:
            # Anthropic's input_tokens excludes cached tokens; the conventions count them all.
            out[sc.USAGE_INPUT] = (usage.input_tokens + usage.cache_read_input_tokens
                                   + usage.cache_creation_input_tokens)
            out[sc.USAGE_OUTPUT] = usage.output_tokens
            out[sc.USAGE_CACHE_READ] = usage.cache_read_input_tokens
            out[sc.USAGE_CACHE_CREATION] = usage.cache_creation_input_tokens
        if exchange.response_id:
            out[sc.RESPONSE_ID] = exchange.response_id
        if exchange.stop_reason:
            out[sc.RESPONSE_FINISH_REASONS] = (exchange.stop_reason,)
        # Its small fields as kept once the answer began: no second parse of the body.
        out.update(_request_parameters(exchange.request.field))
        limit = self.config.max_header_value
        session = exchange.request.headers.get("x-claude-code-session-id")
        if session:
            out[sc.SESSION_ID] = out[sc.CONVERSATION_ID] = session[:limit]
        # The agent ids as the core read and checked them (midway.agents).
        if exchange.agent_id:
            out[sc.AGENT_ID] = exchange.agent_id[:limit]
        if exchange.parent_agent_id:
            out[sc.PARENT_AGENT_ID] = exchange.parent_agent_id[:limit]
        principal = exchange.principal
        out[sc.PRINCIPAL_ID] = principal.id
        out[sc.PRINCIPAL_NAME] = principal.name
        if principal.team:
            out[sc.PRINCIPAL_TEAM] = principal.team
        annotations = exchange.annotations
        cost = annotations.get(COST_USD)
        if cost is not None:
            try:
                out[sc.COST_USD] = float(cost)
            except (TypeError, ValueError):
                pass
        for name, key in ((CACHE, sc.CACHE_RESULT), (ROUTE, sc.ROUTE)):
            value = annotations.get(name)
            if isinstance(value, str):
                out[key] = value
        if self.content is not None:
            out.update(self.content.attributes(exchange))
        return out

    def _metrics(self, exchange: Exchange, attributes: Mapping[str, Any]) -> None:
        tags = dict(attributes)  # low-cardinality by construction (see _attributes)
        model = tags.get(sc.REQUEST_MODEL)
        if model is not None and model not in self._models:
            if len(self._models) < MAX_METRIC_MODELS:
                self._models.add(model)
            else:
                tags[sc.REQUEST_MODEL] = OTHER_MODEL
        duration = (exchange.timings.total_ms or 0.0) / 1000
        self._instruments["duration"].record(duration, tags)
        if exchange.streaming and exchange.timings.ttfb_ms is not None \
                and sc.ERROR_TYPE not in tags:
            self._instruments["ttfc"].record(exchange.timings.ttfb_ms / 1000, tags)
        usage = exchange.usage
        if usage.seen:
            tokens = self._instruments["tokens"]
            tokens.record(usage.input_tokens + usage.cache_read_input_tokens
                          + usage.cache_creation_input_tokens,
                          {**tags, sc.TOKEN_TYPE: "input"})
            tokens.record(usage.output_tokens, {**tags, sc.TOKEN_TYPE: "output"})


def error_type(exchange: Exchange) -> str | None:
    """A low-cardinality name for why a request failed: the Anthropic error type, else the
    core's error kind, else the HTTP status; ``None`` when it succeeded."""
    status = exchange.status or 0
    if exchange.error_type:
        return exchange.error_type
    if exchange.error_kind is not None:
        return exchange.error_kind.value
    if status >= 400:
        return str(status)
    return None


def _request_parameters(field: Callable[[str], Any]) -> dict[str, Any]:
    """The request's sampling parameters, read with ``Request.field``."""
    out: dict[str, Any] = {}
    for name, key, kinds in (("max_tokens", sc.REQUEST_MAX_TOKENS, (int,)),
                              ("temperature", sc.REQUEST_TEMPERATURE, (int, float)),
                              ("top_p", sc.REQUEST_TOP_P, (int, float)),
                              ("top_k", sc.REQUEST_TOP_K, (int,))):
        value = field(name)
        if isinstance(value, kinds) and not isinstance(value, bool):
            out[key] = value
    stops = field("stop_sequences")
    if isinstance(stops, list) and stops and all(isinstance(s, str) for s in stops):
        out[sc.REQUEST_STOP_SEQUENCES] = tuple(s[:100] for s in stops[:16])
    return out


def _server(url: str) -> dict[str, Any]:
    """``server.address`` and ``server.port`` of an upstream URL (nothing for a bad one)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return {}
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return {sc.SERVER_ADDRESS: parts.hostname}
    return {sc.SERVER_ADDRESS: parts.hostname, sc.SERVER_PORT: port}


def _carrier(headers: Mapping[str, str]) -> dict[str, str]:
    """Only the W3C trace context headers: nothing else of the request reaches the SDK."""
    carrier = {}
    for name in ("traceparent", "tracestate"):
        value = headers.get(name)
        if value is not None and len(value) <= 512:
            carrier[name] = value
    return carrier


def _wall_ns(exchange: Exchange, monotonic: float) -> int:
    """A ``time.monotonic()`` instant of this exchange as epoch nanoseconds."""
    timings = exchange.timings
    return int((timings.started_at + (monotonic - timings.started)) * 1e9)


def _span_exporter(config: OtelConfig) -> Any:
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=config.endpoint, headers=config.headers,
                                timeout=config.timeout,
                                insecure=config.endpoint.startswith("http://"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )
    return HTTPSpanExporter(endpoint=f"{config.endpoint}/v1/traces", headers=config.headers,
                            timeout=config.timeout)


def _metric_exporter(config: OtelConfig) -> Any:
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        return OTLPMetricExporter(endpoint=config.endpoint, headers=config.headers,
                                  timeout=config.timeout,
                                  insecure=config.endpoint.startswith("http://"))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HTTPMetricExporter,
    )
    return HTTPMetricExporter(endpoint=f"{config.endpoint}/v1/metrics",
                              headers=config.headers, timeout=config.timeout)


