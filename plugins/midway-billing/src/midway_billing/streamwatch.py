"""The running usage of a streamed answer, event by event: what a hard budget's stream has
cost so far (docs/billing.md, "Streams under a hard budget")."""

from __future__ import annotations

import math
from typing import Any

import attrs

from midway import SSEEvent, Usage

# Text (and thinking, and tool input) per output token, for the output a stream has sent
# since its last ``message_delta`` reported usage.
CHARS_PER_TOKEN = 4
_DELTA_TEXT = ("text", "thinking", "partial_json")


@attrs.define
class StreamWatch:
    """Usage from ``message_start``, overridden by each ``message_delta``'s (cumulative),
    plus output estimated from the text deltas since the last one."""

    limits: dict[str, int | None]  # the reservation's buckets, hard ones with their limit
    model: str | None
    usage: dict[str, Any] = attrs.field(factory=dict)
    chars: int = 0  # delta text since the last reported usage
    cost: int | None = None  # the running cost at the last event that carried usage

    def step(self, cost: int) -> int:
        """Record ``cost``, the running cost now; how much the last event added (0 for the
        first): the next event is expected to add about as much."""
        last, self.cost = self.cost, cost
        return 0 if last is None else max(0, cost - last)

    def feed(self, event: SSEEvent) -> bool:
        """Take one event; whether the running usage may have grown."""
        name = event.name
        if name not in ("content_block_delta", "message_delta", "message_start"):
            return False
        payload = event.json()
        if not isinstance(payload, dict):
            return False
        if name == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict):
                for field in _DELTA_TEXT:
                    text = delta.get(field)
                    if isinstance(text, str):
                        self.chars += len(text)
            return True
        if name == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self.usage.update(usage)
                if isinstance(message.get("model"), str):
                    self.model = message["model"]
            return True
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.usage.update({k: v for k, v in usage.items() if v is not None})
            self.chars = 0
        return True

    def running(self) -> Usage:
        """The usage so far: the last reported, plus the text since at ~4 chars a token."""
        usage = Usage()
        usage.update(self.usage)
        if self.chars:
            usage.update({"output_tokens": usage.output_tokens
                          + math.ceil(self.chars / CHARS_PER_TOKEN)})
        return usage
