"""The ``[otel]`` table: where telemetry goes, what it carries, and the OTLP relay."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import attrs

from midway.options import byte_size, option
from midway.secrets_ref import resolve
from midway.timeparse import parse_duration

PROTOCOLS = ("http/protobuf", "grpc")


def _endpoint(value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise ValueError("expected a URL like http://collector:4318")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _endpoints(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of URLs (http://collector:4318)")
    return tuple(_endpoint(v) for v in value if v)


def _protocol(value: Any) -> str:
    if value not in PROTOCOLS:
        raise ValueError(f"expected one of {', '.join(PROTOCOLS)}, got {value!r}")
    return str(value)


def _headers(value: Any) -> dict[str, str]:
    """Header values may be ``env:NAME`` / ``file:PATH``: collectors' tokens stay out of the
    config file."""
    if not isinstance(value, dict):
        raise ValueError("expected a table of header names to values")
    out: dict[str, str] = {}
    for name, raw in value.items():
        if not isinstance(raw, str):
            raise ValueError(f"header {name}: expected a string, env:NAME or file:PATH")
        out[str(name).lower()] = resolve(raw)
    return out


@attrs.frozen
class OtelConfig:
    """The [otel] table; docs/otel.md explains each key."""

    endpoint: str = option("", converter=_endpoint,
                           help="OTLP collector for midway's own traces and metrics, e.g. "
                                "http://collector:4318 (unset: nothing is exported)")
    protocol: str = option("http/protobuf", converter=_protocol,
                           help="OTLP transport to the endpoint: http/protobuf or grpc")
    headers: dict[str, str] = option({}, converter=_headers,
                                     help="headers sent to the collector (values may be "
                                          "env:NAME or file:PATH)")
    traces: bool = option(True, help="export a span per request")
    metrics: bool = option(True, help="export the GenAI client metrics")
    metric_interval: float = option(60.0, converter=parse_duration,
                                    help="how often metrics are exported, e.g. 30s")
    timeout: float = option(10.0, converter=parse_duration,
                            help="time limit of one export to a collector")
    service_name: str = option("midway", help="the service.name resource attribute")
    capture_content: bool = option(False, help="put prompts and answers on spans, redacted "
                                               "with [audit]'s rules (needs midway-audit)")
    max_content: int = option(16384, converter=byte_size,
                              help="per content attribute, after redaction; longer is cut")
    max_header_value: int = option(128, ge=8,
                                   help="session and agent id attributes are cut to this "
                                        "many characters")
    relay: bool = option(False, help="accept Claude Code's OTLP telemetry at /v1/logs, "
                                     "/v1/metrics, /v1/traces and forward it")
    relay_endpoints: tuple[str, ...] = option((), converter=_endpoints,
                                              help="OTLP/HTTP collectors relayed telemetry "
                                                   "goes to (unset: endpoint, if http)")
    relay_headers: dict[str, str] = option({}, converter=_headers,
                                           help="headers sent to the relay collectors "
                                                "(unset: headers)")
    relay_max_bytes: int = option(4 * 1024 * 1024, converter=byte_size,
                                  help="largest relayed export accepted (decoded)")

    def relay_targets(self) -> tuple[str, ...]:
        if self.relay_endpoints:
            return self.relay_endpoints
        if self.endpoint and self.protocol == "http/protobuf":
            return (self.endpoint,)
        return ()
