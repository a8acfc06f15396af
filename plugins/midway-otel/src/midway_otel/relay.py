"""The OTLP relay: Claude Code's own telemetry, attributed to the midway principal.

``POST /v1/logs``, ``/v1/metrics`` and ``/v1/traces`` arrive as ordinary requests (so the
gateway's authentication, body limit and credential stripping apply), are decoded, have every
resource stamped with who midway says sent them — attributes the client set under
``midway.`` are dropped first, so nobody claims to be someone else — and are posted to the
relay collectors with the relay's own headers, never the client's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from midway import Exchange, MidwayError, Principal, Response
from midway_otel import semconv as sc
from midway_otel.config import OtelConfig

PROTOBUF = "application/x-protobuf"
# path -> (request type, response type, the field holding the resource entries)
SIGNALS: dict[str, tuple[type[Message], type[Message], str]] = {
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse, "resource_logs"),
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse,
                    "resource_metrics"),
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse, "resource_spans"),
}
STAMP_PREFIX = "midway."


class Relay:
    """Forwards authenticated OTLP exports to the configured collectors."""

    def __init__(self, config: OtelConfig) -> None:
        self.targets = config.relay_targets()
        # The endpoint's headers go only to the endpoint itself.
        self.headers = dict(config.relay_headers if config.relay_endpoints
                            else config.relay_headers or config.headers)
        self.max_bytes = config.relay_max_bytes
        self.timeout = config.timeout
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def answer(self, exchange: Exchange) -> Response:
        path = exchange.request.path
        request_type, response_type, field = SIGNALS[path]
        if exchange.request.method != "POST":
            raise MidwayError(405, f"{path} takes POST (an OTLP/HTTP export)")
        if exchange.principal.kind in ("passthrough", "anonymous"):
            raise MidwayError(403, "the OTLP relay needs a midway client key (telemetry is "
                              "attributed to the key's owner): enable [keys] or "
                              "[[midway.client_keys]] and send one")
        content_type = (exchange.request.headers.get("content-type") or "").split(";")[0]
        if content_type.strip().lower() != PROTOBUF:
            raise MidwayError(415, f"the OTLP relay takes {PROTOBUF} (set "
                              "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)")
        body = exchange.request.body
        if len(body) > self.max_bytes:
            raise MidwayError(413, f"OTLP export of {len(body)} bytes exceeds the relay's "
                              f"limit of {self.max_bytes} bytes")
        export = request_type()
        try:
            export.ParseFromString(body)
        except DecodeError:
            raise MidwayError(400, f"the body is not an OTLP {request_type.__name__}") from None
        stamp(export, field, exchange.principal)
        await self._forward(path, export.SerializeToString())
        return Response(status=200, body=response_type().SerializeToString(),
                        content_type=PROTOBUF)

    async def _forward(self, path: str, data: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {**self.headers, "content-type": PROTOBUF}
        results = await asyncio.gather(*(self._post(self._session, target + path, data, headers)
                                         for target in self.targets))
        if not any(results):
            # 502 is retryable for OTLP exporters: the client keeps the batch and tries again.
            raise MidwayError(502, "no OTLP collector accepted the export")

    @staticmethod
    async def _post(session: aiohttp.ClientSession, url: str, data: bytes,
                    headers: dict[str, str]) -> bool:
        try:
            async with session.post(url, data=data, headers=headers,
                                    allow_redirects=False) as response:
                await response.read()
                return 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False


def stamp(export: Any, field: str, principal: Principal) -> None:
    """Set the principal on every resource of ``export``, replacing any ``midway.*``
    attribute the client sent."""
    values = {sc.PRINCIPAL_ID: principal.id, sc.PRINCIPAL_NAME: principal.name}
    if principal.team:
        values[sc.PRINCIPAL_TEAM] = principal.team
    for entry in getattr(export, field):
        attributes = entry.resource.attributes
        kept = [kv for kv in attributes if not kv.key.startswith(STAMP_PREFIX)]
        del attributes[:]
        attributes.extend(kept)
        for key, value in values.items():
            item = KeyValue(key=key)
            item.value.string_value = value
            attributes.append(item)
