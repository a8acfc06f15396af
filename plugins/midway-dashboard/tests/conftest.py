from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

import midway_dashboard
from midway.testing import RunningMidway
from midway_dashboard.testing import browser, screenshot_dir

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def start_dashboard(midway_factory: Callable[..., RunningMidway]) -> Callable[..., RunningMidway]:
    """``start_dashboard(*other_plugins, **settings)``: midway with the dashboard loaded."""

    def start(*plugins: Any, config: dict[str, Any] | None = None, **settings: Any
              ) -> RunningMidway:
        return midway_factory(plugins=[("dashboard", midway_dashboard), *plugins],
                              config=config, **settings)

    return start


@pytest.fixture
def sdk() -> Callable[..., anthropic.Anthropic]:
    """``sdk(running, key=...)``: the official client pointed at a running midway."""

    def make(running: RunningMidway, key: str = "sk-ant-test") -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=running.url, api_key=key, max_retries=0)

    return make


@pytest.fixture(scope="module")  # one Playwright at a time: another suite may start its own
def chromium() -> Iterator[Any]:
    with browser() as instance:
        yield instance


@pytest.fixture(scope="session")
def screenshots() -> Path:
    return screenshot_dir(ROOT)
