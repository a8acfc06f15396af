"""Fixtures of the Claude Code conformance suite: the CLI, and midway with its plugins on."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cc_canary
import pytest
from cc_support import (
    AWS_KEY,
    AWS_SECRET,
    CLAUDE_CODE_VERSION,
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

# The cloud fakes live with the router's tests (they check what Google and AWS would).
sys.path.insert(0, str(Path(__file__).parents[2] / "plugins" / "midway-router" / "tests"))
from fake_bedrock import FakeBedrockServer
from fake_vertex import FakeGoogle, service_account

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


# -- the release under test, and the compatibility matrix (cc_canary.py) ----------------------

_RESOLVED = pytest.StashKey[cc_canary.Resolved]()
_OUTCOMES = pytest.StashKey[cc_canary.Outcomes]()


def _say(line: str) -> None:
    """One line on the real terminal, whatever pytest captures."""
    if sys.__stderr__ is not None:
        print(f"[claude-code] {line}", file=sys.__stderr__, flush=True)


def pytest_configure(config: pytest.Config) -> None:
    spec = config.getoption("--claude-code-version", default="pinned")
    try:
        resolved = cc_canary.resolve(spec, CLAUDE_CODE_VERSION)
    except cc_canary.VersionError as exc:
        raise pytest.UsageError(str(exc)) from None
    if resolved.note:
        _say(resolved.note)
    elif spec != "pinned":
        _say(f"testing Claude Code {resolved.version} ({spec}; pinned: {CLAUDE_CODE_VERSION})")
    config.stash[_RESOLVED] = resolved
    config.stash[_OUTCOMES] = cc_canary.Outcomes()


def _cells(item: pytest.Item) -> list[tuple[str, str, str]]:
    return [cell for marker in item.iter_markers("cc_cell")
            for cell in cc_canary.cells_of(marker.kwargs)]


def pytest_itemcollected(item: pytest.Item) -> None:
    """Cells with a test, whether or not this run selects it (a quick run: "not run")."""
    if _OUTCOMES in item.config.stash:
        item.config.stash[_OUTCOMES].collect(_cells(item))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    cells = _cells(item)
    # A failed set-up or tear-down fails the cell as much as a failed test body.
    if cells and (report.when == "call" or not report.passed):
        item.config.stash[_OUTCOMES].add(cells, item.nodeid, report.outcome)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--cc-matrix-json", default=None)
    if path and _RESOLVED in session.config.stash:
        outcomes = session.config.stash[_OUTCOMES]
        run = outcomes.as_json(session.config.stash[_RESOLVED])
        Path(path).write_text(json.dumps(run, indent=1, sort_keys=True))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    resolved = config.stash.get(_RESOLVED, None)
    if resolved is None or (resolved.requested == "pinned" and not resolved.note):
        return
    terminalreporter.write_line(f"Claude Code {resolved.version} tested "
                                f"(--claude-code-version {resolved.requested})"
                                + (f"; {resolved.note}" if resolved.note else ""))


@pytest.fixture
def cc_collected(pytestconfig: pytest.Config) -> set[str]:
    """The matrix cells (cc_canary.cell_key) of the tests this session collected."""
    return set(pytestconfig.stash[_OUTCOMES].collected)


def _install(config: pytest.Config, version: str) -> Path:
    """install_claude_code, its progress lines on the terminal (not in a test's capture)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        return install_claude_code(version)
    with capture.global_and_fixture_disabled():
        return install_claude_code(version)


@pytest.fixture(scope="session")
def claude_binary(pytestconfig: pytest.Config) -> Path:
    resolved = pytestconfig.stash[_RESOLVED]
    try:
        return _install(pytestconfig, resolved.version)
    except ClaudeCodeMissing as exc:
        if resolved.requested != "latest" or resolved.version == resolved.pinned:
            pytest.fail(str(exc))
        fallback = resolved.with_fallback(
            f"Claude Code {resolved.version} could not be installed "
            f"({str(exc).splitlines()[0]})")
    pytestconfig.stash[_RESOLVED] = fallback  # the terminal summary and the matrix say so
    try:
        return _install(pytestconfig, fallback.version)
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


def cloud_stack(tmp_path: Path, fake_upstream: FakeUpstream, openai_upstream: OpenAIUpstream,
                upstream: dict[str, Any]) -> Iterator[Stack]:
    """The team setup with one router upstream: ``upstream``."""
    config = plugin_config(fake_upstream.url, openai_upstream.url)
    config["midway"].update(client_keys=[TEAM_KEY], upstream_api_key=UPSTREAM_KEY)
    config["router"].update(upstreams=[upstream], rules=[])
    probe = Probe()
    running = start_midway(tmp_path / "midway", upstream["url"],
                           plugins=[("cc_probe", probe)], config=config)
    try:
        yield Stack(midway=running, probe=probe)
    finally:
        running.stop()


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    server = FakeGoogle()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def vertex_stack(tmp_path: Path, fake_upstream: FakeUpstream, openai_upstream: OpenAIUpstream,
                 google: FakeGoogle) -> Iterator[Stack]:
    info, google.public_key = service_account(google.token_uri)
    google.email = info["client_email"]
    key_file = tmp_path / "vertex-key.json"
    key_file.write_text(json.dumps(info))
    yield from cloud_stack(tmp_path, fake_upstream, openai_upstream, {
        "name": "gcp", "kind": "vertex", "region": "us-east5", "url": google.url,
        "service_account": f"file:{key_file}"})


@pytest.fixture
def bedrock() -> Iterator[FakeBedrockServer]:
    server = FakeBedrockServer(AWS_KEY, AWS_SECRET)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bedrock_stack(tmp_path: Path, fake_upstream: FakeUpstream, openai_upstream: OpenAIUpstream,
                  bedrock: FakeBedrockServer) -> Iterator[Stack]:
    yield from cloud_stack(tmp_path, fake_upstream, openai_upstream, {
        "name": "aws", "kind": "bedrock", "region": "us-east-1", "url": bedrock.url,
        "credentials": [{"access_key_id": AWS_KEY, "secret_access_key": AWS_SECRET}]})


@pytest.fixture
def openai_stack(tmp_path: Path, fake_upstream: FakeUpstream,
                 openai_upstream: OpenAIUpstream) -> Iterator[Stack]:
    """The team setup with the OpenAI-compatible vendor as the only upstream."""
    yield from cloud_stack(tmp_path, fake_upstream, openai_upstream, {
        "name": "openai", "kind": "openai", "url": openai_upstream.url,
        "keys": ["sk-openai-conformance"], "models": {"*": OPENAI_MODEL}})


@pytest.fixture
def anthropic_stack(tmp_path: Path, fake_upstream: FakeUpstream,
                    openai_upstream: OpenAIUpstream) -> Iterator[Stack]:
    """The team setup with the (fake) Anthropic API as the only upstream, holding midway's
    key."""
    yield from cloud_stack(tmp_path, fake_upstream, openai_upstream, {
        "name": "anthropic", "kind": "anthropic", "url": fake_upstream.url,
        "keys": [UPSTREAM_KEY]})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that runs the real CLI names its matrix cell: an unmarked one would vanish from
    docs/claude-code-compatibility.md without anyone noticing."""
    unmarked = [item.nodeid for item in items
                if "claude" in getattr(item, "fixturenames", ()) and not _cells(item)]
    if unmarked:
        raise pytest.UsageError("tests that run Claude Code need a cc_cell(feature, format, "
                                "upstream) marker: " + ", ".join(unmarked))
