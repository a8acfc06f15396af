"""midway.testing.PromptCache: the fake upstream's stand-in for prompt caching."""

from __future__ import annotations

from typing import Any

from midway.testing import PromptCache


def body(model: str = "m", system: str = "s", n: int = 1) -> dict[str, Any]:
    return {"model": model, "system": [{"type": "text", "text": system}],
            "tools": [{"name": "Bash"}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": f"message {i} " * 20,
                 **({"cache_control": {"type": "ephemeral"}} if i == n - 1 else {})}]}
                for i in range(n)]}


def test_a_growing_conversation_reads_what_the_last_turn_wrote() -> None:
    cache = PromptCache()
    first = cache.usage(body(n=1))
    assert first["cache_read_input_tokens"] == 0 and first["cache_creation_input_tokens"] > 0
    second = cache.usage(body(n=2))  # the marker moved on: the first message still matches
    total = sum(second[k] for k in ("input_tokens", "cache_read_input_tokens",
                                    "cache_creation_input_tokens"))
    cached_first = first["cache_creation_input_tokens"] + first["input_tokens"]
    assert cached_first - 1 <= second["cache_read_input_tokens"] <= cached_first < total
    # Another model, another system prompt: nothing cached for them.
    assert cache.usage(body(model="other", n=3))["cache_read_input_tokens"] == 0
    assert cache.usage(body(system="changed", n=3))["cache_read_input_tokens"] == 0
    # Claude Code's attribution line is not part of the cached prefix.
    attributed = body(n=3)
    attributed["system"].insert(0, {"type": "text", "text": "x-anthropic-billing-header: x"})
    assert cache.usage(attributed)["cache_read_input_tokens"] > 0
    cache.clear()
    assert cache.usage(body(n=3))["cache_read_input_tokens"] == 0
