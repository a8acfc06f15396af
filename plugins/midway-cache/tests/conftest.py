"""Shared helpers: a midway with the cache in front of the fake upstream, SDK clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import pytest

import midway_cache
from midway.testing import RunningMidway, wait_for

RICH_CONTENT = [
    {"type": "thinking", "thinking": "Let me think about the weather.", "signature": "sig_abc"},
    {"type": "text", "text": "I'll look that up for you."},
    {"type": "tool_use", "name": "get_weather", "input": {"city": "Paris", "days": 3}},
]


def body(prompt: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-6", "max_tokens": 256,
            "messages": [{"role": "user", "content": prompt}], **extra}


@pytest.fixture
def cached(midway_factory: Callable[..., RunningMidway]) -> Callable[..., RunningMidway]:
    """``cached(**cache_settings)`` → a running midway with the cache plugin."""

    def start(**settings: Any) -> RunningMidway:
        return midway_factory(plugins=[("cache", midway_cache)], config={"cache": settings})

    return start


# The cache is opt-in: these clients ask for it on every request.
USE_CACHE = {"x-midway-cache": "use"}


def client(running: RunningMidway, key: str = "sk-ant-test-alice") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=running.url, api_key=key, max_retries=0,
                               default_headers=USE_CACHE)


def stats(running: RunningMidway) -> dict[str, Any]:
    result: dict[str, Any] = running.call(running.midway.services["cache"].stats())
    return result


def without_ids(message: Any) -> dict[str, Any]:
    """A message as a dict with its ids removed, for comparing a replay to the original."""
    data = message if isinstance(message, dict) else message.model_dump()
    data = {k: v for k, v in data.items() if k != "id"}
    data["content"] = [{k: v for k, v in b.items() if k != "id"} for b in data["content"]]
    return data


def stored(running: RunningMidway, n: int = 1) -> None:
    """Wait until ``n`` answers were stored (post_response runs after the client has its
    answer, so a test must not race it)."""
    wait_for(lambda: stats(running)["stores"] >= n)
