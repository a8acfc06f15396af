"""Rebuilding the complete message from a streamed answer, event by event.

The result is what the same request without ``stream`` would have returned, so one cache
entry serves both kinds of request. Anything unexpected marks the stream as not storable:
the cache never keeps an answer it could not rebuild exactly.
"""

from __future__ import annotations

from typing import Any

import orjson


class MessageAssembler:
    """Feed parsed SSE events in order; ``message`` is set once ``message_stop`` arrived
    after a well-formed stream, and ``failed`` when anything went wrong."""

    __slots__ = ("_blocks", "_json", "_message", "complete", "failed")

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}
        self.complete = False
        self.failed = False

    @property
    def message(self) -> dict[str, Any] | None:
        if not self.complete or self.failed or self._message is None:
            return None
        message = dict(self._message)
        message["content"] = [self._blocks[i] for i in sorted(self._blocks)]
        return message

    def feed(self, name: str | None, payload: Any) -> None:
        if self.failed or name == "ping":
            return
        if self.complete or not isinstance(payload, dict):
            self.failed = True  # data after message_stop, or an event that is not JSON
            return
        try:
            self._apply(name, payload)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.failed = True

    def _apply(self, name: str | None, payload: dict[str, Any]) -> None:
        if name == "message_start":
            message = payload["message"]
            self._message = {**message, "usage": dict(message.get("usage") or {})}
        elif self._message is None:
            self.failed = True  # anything before message_start
        elif name == "content_block_start":
            index = int(payload["index"])
            block = dict(payload["content_block"])
            if block.get("type") in ("tool_use", "server_tool_use", "mcp_tool_use"):
                self._json[index] = []
            self._blocks[index] = block
        elif name == "content_block_delta":
            self._delta(self._blocks[int(payload["index"])], int(payload["index"]),
                        payload["delta"])
        elif name == "content_block_stop":
            index = int(payload["index"])
            if index in self._json:
                text = "".join(self._json.pop(index))
                self._blocks[index]["input"] = orjson.loads(text) if text else {}
        elif name == "message_delta":
            delta = payload.get("delta") or {}
            for field in ("stop_reason", "stop_sequence", "container"):
                if field in delta:
                    self._message[field] = delta[field]
            usage = payload.get("usage")
            if isinstance(usage, dict):
                # cumulative values: later ones replace earlier ones, never add up
                self._message["usage"].update({k: v for k, v in usage.items() if v is not None})
        elif name == "message_stop":
            if self._json:
                self.failed = True  # a tool_use block never closed
            self.complete = True
        else:  # "error", or an event this assembler does not know
            self.failed = True

    def _delta(self, block: dict[str, Any], index: int, delta: dict[str, Any]) -> None:
        kind = delta["type"]
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta["text"]
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta["thinking"]
        elif kind == "signature_delta":
            block["signature"] = block.get("signature", "") + delta["signature"]
        elif kind == "input_json_delta":
            self._json[index].append(delta["partial_json"])
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta["citation"])
        else:
            self.failed = True
