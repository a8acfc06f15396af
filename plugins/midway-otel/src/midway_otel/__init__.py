"""midway-otel: OpenTelemetry GenAI traces and metrics over OTLP, stitched to the client's
trace, and an OTLP relay that attributes Claude Code's own telemetry to the midway principal.

Installed but not configured (no ``[otel] endpoint``, relay off), it does nothing and says so
at start-up. Modules: ``config`` (the [otel] table), ``semconv`` (the names), ``telemetry``
(spans and metrics of a request), ``content`` (opt-in redacted content), ``outage`` (export
failures logged once), ``relay`` (the OTLP relay), ``testing`` (an OTLP receiver for tests).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import attrs

from midway import Exchange, Midway, Response, hookimpl
from midway.config import ConfigError
from midway.services import ServiceKey
from midway_otel.config import OtelConfig
from midway_otel.content import ContentCapture
from midway_otel.relay import SIGNALS, Relay
from midway_otel.semconv import SEMCONV_VERSION
from midway_otel.telemetry import Telemetry

__all__ = ["OTEL", "SEMCONV_VERSION", "Otel", "OtelConfig", "Telemetry"]


@attrs.define(eq=False)
class Otel:
    """The plugin's state for one running midway: the exporter side and the relay."""

    config: OtelConfig
    telemetry: Telemetry | None
    relay: Relay | None


OTEL: ServiceKey[Otel] = ServiceKey("otel")


def _content(midway: Midway, config: OtelConfig) -> ContentCapture | None:
    if not config.capture_content:
        return None
    try:
        from midway_audit.config import AuditConfig
        from midway_audit.redact import Redactor
    except ImportError:
        raise ConfigError("[otel] capture_content = true needs midway-audit installed: its "
                          "[audit] redaction rules are applied to the content") from None
    audit = midway.options("audit", AuditConfig)
    redactor = Redactor(audit.redact_defaults, audit.redact_patterns, audit.redact_headers)
    return ContentCapture(redactor, config.max_content)


def _config(midway: Midway) -> OtelConfig:
    """The [otel] table, with the settings that need one another checked."""
    config = midway.options("otel", OtelConfig)
    if config.relay and not config.relay_targets():
        raise ConfigError("[otel] relay = true needs relay_endpoints (OTLP/HTTP collectors), "
                          "or an http/protobuf endpoint")
    if config.relay and not midway.settings.client_keys_enabled:
        raise ConfigError("[otel] relay = true needs client keys ([keys] enabled = true or "
                          "[[midway.client_keys]]): relayed telemetry is attributed to the "
                          "key's owner, and pass-through keys name nobody")
    return config


@hookimpl
def startup(midway: Midway) -> None:
    config = _config(midway)
    telemetry = None
    if config.endpoint and (config.traces or config.metrics):
        content = _content(midway, config)
        telemetry = Telemetry.from_config(config, content)
        if content is not None:
            # streamed answers are rebuilt from the kept bytes for gen_ai.output.messages
            midway.keep_stream_bodies(config.max_content * 4)
    relay = Relay(config) if config.relay else None
    midway.services[OTEL] = Otel(config, telemetry, relay)


@hookimpl
async def config_check(midway: Midway) -> list[str]:
    """The table, and whether each collector it names accepts a connection."""
    config = _config(midway)
    if config.capture_content:
        _content(midway, config)
    urls = ([config.endpoint] if config.endpoint else []) + \
        ([u for u in config.relay_targets() if u != config.endpoint] if config.relay else [])
    problems = []
    for url in urls:
        try:
            async with asyncio.timeout(config.timeout):
                reason = await unreachable(url)
        except TimeoutError:
            reason = f"no answer within {config.timeout:g} s"
        if reason is not None:
            problems.append(f"[otel] collector {url} is unreachable: {reason}")
    return problems


async def unreachable(url: str) -> str | None:
    """Why a TCP connection to ``url``'s host and port fails, or ``None`` when it opens."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.open_connection(parts.hostname, port)
    except OSError as exc:
        return exc.strerror or str(exc)
    writer.close()
    return None


@hookimpl
async def shutdown(midway: Midway) -> None:
    otel = midway.services.pop(OTEL, None)
    if otel is None:
        return
    if otel.relay is not None:
        await otel.relay.close()
    if otel.telemetry is not None:
        # flushes pending spans and metrics over the network: off the event loop
        await asyncio.to_thread(otel.telemetry.shutdown)


@hookimpl
def describe(midway: Midway) -> str:
    config = midway.options("otel", OtelConfig)
    if config.endpoint and (config.traces or config.metrics):
        what = " and ".join(w for w, on in (("traces", config.traces),
                                            ("metrics", config.metrics)) if on)
        content = "captured, redacted" if config.capture_content else "not captured"
        parts = [f"exports {what} to {config.endpoint} ({config.protocol}, GenAI semconv "
                 f"{SEMCONV_VERSION}), content {content}"]
    else:
        parts = ["no endpoint set: exports nothing"]
    if config.relay:
        parts.append(f"relays /v1/logs, /v1/metrics, /v1/traces to "
                     f"{', '.join(config.relay_targets())}")
    return "; ".join(parts)


def _otel(exchange: Exchange) -> Otel | None:
    return exchange.midway.services.get(OTEL) if exchange.midway is not None else None


@hookimpl(tryfirst=True)
async def pre_request(exchange: Exchange) -> Response | None:
    if exchange.request.path not in SIGNALS:
        return None
    otel = _otel(exchange)
    if otel is None or otel.relay is None:
        return None  # relay off: the path goes upstream as any other
    return await otel.relay.answer(exchange)


@hookimpl(trylast=True)  # after billing, whose cost annotation the span carries
def post_response(exchange: Exchange) -> None:
    # Requests nobody known made (a wrong key) are not recorded: anyone can send them without
    # limit, naming any model (/metrics counts them, in one series).
    if not exchange.request.is_messages or exchange.unauthenticated:
        return
    otel = _otel(exchange)
    if otel is not None and otel.telemetry is not None:
        otel.telemetry.record(exchange)


