"""One access-log line per request: escaped, truncated, never a credential."""

from __future__ import annotations

import logging

import orjson

from midway.exchange import Exchange

log = logging.getLogger("midway.access")
_MAX = 200


def _clean(value: object) -> str:
    text = str(value)
    if len(text) > _MAX:
        text = text[:_MAX] + "…"
    # Control characters (CR/LF included) are escaped so one request is one line.
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


def fields(exchange: Exchange) -> dict[str, object]:
    usage = exchange.usage
    return {
        "request_id": exchange.id,
        "upstream_request_id": exchange.upstream_request_id,
        "principal": exchange.principal.id,
        "team": exchange.principal.team,
        "method": exchange.request.method,
        "path": exchange.request.path,
        "model": exchange.model if exchange.request.is_messages else None,
        "status": exchange.status,
        "upstream": exchange.upstream.name if exchange.upstream else None,
        "attempts": len(exchange.attempts),
        "answered_by": exchange.answered_by,
        "ttfb_ms": round(exchange.timings.ttfb_ms, 2) if exchange.timings.ttfb_ms else None,
        "total_ms": round(exchange.timings.total_ms, 2) if exchange.timings.total_ms else None,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_input_tokens,
        "cache_write_tokens": usage.cache_creation_input_tokens,
        "error": exchange.error,
    }


def write(exchange: Exchange, fmt: str) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    data = {k: (_clean(v) if isinstance(v, str) else v) for k, v in fields(exchange).items()}
    if fmt == "json":
        log.info(orjson.dumps(data).decode())
    else:
        log.info(" ".join(f"{k}={v}" for k, v in data.items() if v is not None))
