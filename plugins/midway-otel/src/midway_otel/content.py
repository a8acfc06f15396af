"""Prompt and answer content on spans (``capture_content``), redacted with audit's rules."""

from __future__ import annotations

from typing import Any

import orjson

from midway import Exchange
from midway.assemble import MessageAssembler
from midway_otel import semconv as sc


class ContentCapture:
    """Builds the opt-in content attributes of a span; nothing leaves unredacted."""

    def __init__(self, redactor: Any, limit: int) -> None:
        self._redactor = redactor  # midway_audit.redact.Redactor
        self._limit = limit

    def attributes(self, exchange: Exchange) -> dict[str, str]:
        out: dict[str, str] = {}
        body = exchange.request.json
        if isinstance(body, dict):
            if body.get("system") is not None:
                out[sc.SYSTEM_INSTRUCTIONS] = self._text(body["system"])
            if isinstance(body.get("messages"), list):
                out[sc.INPUT_MESSAGES] = self._text(body["messages"])
        answer = _answer(exchange)
        if answer is not None:
            out[sc.OUTPUT_MESSAGES] = self._text([answer])
        return out

    def _text(self, value: Any) -> str:
        text = str(self._redactor.text(orjson.dumps(value).decode()))
        if len(text) > self._limit:
            return text[:self._limit] + "…[cut]"
        return text


def _answer(exchange: Exchange) -> dict[str, Any] | None:
    """The answer as a message (``role``, ``content``, ``stop_reason``), from the JSON body or
    the kept stream; ``None`` when midway does not hold it."""
    if exchange.response_body is not None and not exchange.response_body_truncated:
        try:
            payload = orjson.loads(exchange.response_body)
        except orjson.JSONDecodeError:
            return None
        if isinstance(payload, dict) and payload.get("type") == "message":
            return {"role": payload.get("role"), "content": payload.get("content"),
                    "finish_reason": payload.get("stop_reason")}
        return None
    stream = exchange.stream_body
    if stream is None:
        return None
    assembler = MessageAssembler()
    assembler.feed_bytes(stream)
    message = assembler.message()
    return {"role": message.get("role"), "content": message.get("content"),
            "finish_reason": message.get("stop_reason"),
            "cut": exchange.stream_truncated or None}
