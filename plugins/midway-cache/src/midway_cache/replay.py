"""Serving a stored message again: as JSON, or as the SSE stream Anthropic would have sent.

Every replay gets fresh ``msg_`` and tool-use ids (an agent that sees the same tool_use id twice
in one conversation would be confused), with references to them (``tool_use_id``) rewritten to
match. Usage is the original's: what the answer cost when it was made.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterator
from typing import Any

import orjson

_B62 = string.ascii_letters + string.digits
_ID_PREFIXES = ("toolu_", "srvtoolu_", "mcptoolu_")
# a text of this many characters or more is sent in several deltas, like a live stream
_DELTA_CHARS = 2048


def token(n: int = 24) -> str:
    return "".join(secrets.choice(_B62) for _ in range(n))


def fresh_ids(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``message`` with a new message id and new tool-use ids."""
    mapping: dict[str, str] = {}
    content = []
    for block in message.get("content") or []:
        block = dict(block)
        old = block.get("id")
        if isinstance(old, str) and old.startswith(_ID_PREFIXES):
            prefix = old[:old.index("_") + 1]
            mapping[old] = f"{prefix}01{token(22)}"
            block["id"] = mapping[old]
        content.append(block)
    for block in content:
        ref = block.get("tool_use_id")
        if isinstance(ref, str) and ref in mapping:
            block["tool_use_id"] = mapping[ref]
    return {**message, "id": f"msg_01{token(22)}", "content": content}


def as_json(message: dict[str, Any]) -> bytes:
    return orjson.dumps(fresh_ids(message))


def as_sse(message: dict[str, Any]) -> bytes:
    """The whole stream, as one byte string (it is small and already known)."""
    return b"".join(_events(fresh_ids(message)))


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _pieces(text: str) -> list[str]:
    if len(text) < _DELTA_CHARS:
        return [text]
    return [text[i:i + _DELTA_CHARS] for i in range(0, len(text), _DELTA_CHARS)]


def _events(message: dict[str, Any]) -> Iterator[bytes]:
    usage = dict(message.get("usage") or {})
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": usage}
    yield _event("message_start", {"type": "message_start", "message": start})
    for index, block in enumerate(message.get("content") or []):
        yield from _block_events(index, block)
    delta: dict[str, Any] = {"stop_reason": message.get("stop_reason"),
                             "stop_sequence": message.get("stop_sequence")}
    if message.get("container") is not None:
        delta["container"] = message["container"]
    yield _event("message_delta", {"type": "message_delta", "delta": delta,
                                   "usage": {k: v for k, v in usage.items()
                                             if k != "service_tier"}})
    yield _event("message_stop", {"type": "message_stop"})


def _block_events(index: int, block: dict[str, Any]) -> Iterator[bytes]:
    kind = block.get("type")

    def delta(payload: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": payload})

    def start(content_block: dict[str, Any]) -> bytes:
        return _event("content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": content_block})

    if kind == "text":
        citations = block.get("citations")
        head: dict[str, Any] = {"type": "text", "text": ""}
        if citations is not None:
            head["citations"] = []
        yield start(head)
        for piece in _pieces(block.get("text", "")):
            yield delta({"type": "text_delta", "text": piece})
        for citation in citations or []:
            yield delta({"type": "citations_delta", "citation": citation})
    elif kind == "thinking":
        yield start({"type": "thinking", "thinking": "", "signature": ""})
        for piece in _pieces(block.get("thinking", "")):
            yield delta({"type": "thinking_delta", "thinking": piece})
        yield delta({"type": "signature_delta", "signature": block.get("signature", "")})
    elif kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
        yield start({**block, "input": {}})
        yield delta({"type": "input_json_delta",
                     "partial_json": orjson.dumps(block.get("input", {})).decode()})
    else:  # redacted_thinking, tool results: sent whole in content_block_start
        yield start(block)
    yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
