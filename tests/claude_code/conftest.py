"""Fixtures of the Claude Code conformance suite: the CLI, and midway with its plugins on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cc_support import (
    GATEWAY_MODELS,
    MAPPED_FROM,
    MAPPED_TO,
    OPENAI_MODEL,
    ROUTE_HEADER,
    SPEND_ADMIN_KEY,
    SPEND_CI_KEY,
    TEAM_KEY,
    UPSTREAM_KEY,
    Claude,
    ClaudeCodeMissing,
    Probe,
    Stack,
    install_claude_code,
)
from openai_upstream import OpenAIUpstream

from midway.testing import FakeUpstream, start_midway

# Every plugin of the project, enabled in every scenario: Claude Code must not be able to tell
# that they are there. A plugin listed here that is not installed fails the suite.
PLUGINS: tuple[str, ...] = ("audit", "billing", "cache", "router")


def plugin_config(anthropic_url: str, openai_url: str) -> dict[str, Any]:
    """The TOML tables of the enabled plugins (embedded stores go to midway's data dir)."""
    return {
        "midway": {"plugins": list(PLUGINS)},
        "audit": {"store": "sqlite", "sqlite_synchronous": "normal"},
        # Claude Code's default model is in billing's shipped catalogue: no prices here.
        "billing": {"store": "sqlite"},
        # the exact cache, opted into for every request (the cache and its semantic layer are
        # opt-in)
        "cache": {"store": "sqlite", "rules": [{"model": "*"}]},
        "router": {
            # The first upstream is the default; without keys, the client's own credential
            # passes through.
            "upstreams": [
                {"name": "anthropic", "kind": "anthropic", "url": anthropic_url},
                {"name": "openai", "kind": "openai", "url": openai_url,
                 "keys": ["sk-openai-conformance"], "models": {"*": OPENAI_MODEL}},
            ],
            "rules": [{"name": "to-openai", "match": {"headers": {ROUTE_HEADER: "openai"}},
                       "target": "openai"},
                      # Model mapping: what a team maps an expensive model to.
                      {"name": "opus-to-sonnet", "match": {"model": MAPPED_FROM},
                       "target": "anthropic", "model": MAPPED_TO}],
        },
    }


@pytest.fixture(scope="session")
def claude_binary() -> Path:
    try:
        return install_claude_code()
    except ClaudeCodeMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture
def claude(claude_binary: Path, tmp_path: Path) -> Claude:
    return Claude(claude_binary, tmp_path / "claude")


@pytest.fixture
def openai_upstream() -> Iterator[OpenAIUpstream]:
    server = OpenAIUpstream().start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.fixture
def stack(fake_upstream: FakeUpstream, openai_upstream: OpenAIUpstream, tmp_path: Path
          ) -> Iterator[Stack]:
    yield from _stack(tmp_path, plugin_config(fake_upstream.url, openai_upstream.url))


@pytest.fixture
def team_stack(fake_upstream: FakeUpstream, openai_upstream: OpenAIUpstream, tmp_path: Path
               ) -> Iterator[Stack]:
    """The team setup: clients present midway keys; the real key is midway's."""
    config = plugin_config(fake_upstream.url, openai_upstream.url)
    config["midway"].update(client_keys=[TEAM_KEY], upstream_api_key=UPSTREAM_KEY)
    # A keyless router upstream passes the client's credential through, and a midway key is
    # never passed on: with the router, the Anthropic upstream must hold the real key itself.
    config["router"]["upstreams"][0]["keys"] = [UPSTREAM_KEY]
    yield from _stack(tmp_path, config)


@pytest.fixture
def discovery_stack(fake_upstream: FakeUpstream, openai_upstream: OpenAIUpstream,
                    tmp_path: Path) -> Iterator[Stack]:
    """The stack answering model discovery itself, from a [[models.list]] (and the router's
    rule that routes a model by name)."""
    config = plugin_config(fake_upstream.url, openai_upstream.url)
    config["models"] = {"list": GATEWAY_MODELS}
    yield from _stack(tmp_path, config)


@pytest.fixture
def subagent_stack(fake_upstream: FakeUpstream, openai_upstream: OpenAIUpstream,
                   tmp_path: Path) -> Iterator[Stack]:
    """The stack with a first rule sending every subagent's request to the OpenAI upstream."""
    config = plugin_config(fake_upstream.url, openai_upstream.url)
    config["router"]["rules"].insert(0, {"name": "subagents", "match": {"agent": "*"},
                                         "target": "openai"})
    yield from _stack(tmp_path, config)


@pytest.fixture
def spend_stack(fake_upstream: FakeUpstream, openai_upstream: OpenAIUpstream,
                tmp_path: Path) -> Iterator[Stack]:
    """The team setup with spend limits on: a CI key in the "interns" group."""
    config = plugin_config(fake_upstream.url, openai_upstream.url)
    config["midway"].update(client_keys=[SPEND_CI_KEY], upstream_api_key=UPSTREAM_KEY,
                            admin_key=SPEND_ADMIN_KEY)
    config["router"]["upstreams"][0]["keys"] = [UPSTREAM_KEY]
    config["billing"].update(spend_limits=True)
    config["cache"]["rules"] = []  # every run reaches the upstream
    yield from _stack(tmp_path, config)


def _stack(tmp_path: Path, config: dict[str, Any]) -> Iterator[Stack]:
    probe = Probe()
    running = start_midway(tmp_path / "midway", config["router"]["upstreams"][0]["url"],
                           plugins=[("cc_probe", probe)], config=config)
    try:
        loaded = {info.name: info for info in running.midway.plugins.infos}
        for name in PLUGINS:
            info = loaded.get(name)
            assert info is not None, f"plugin {name} is not installed"
            assert info.error is None, f"plugin {name} failed to load: {info.error}"
        yield Stack(midway=running, probe=probe)
    finally:
        running.stop()
