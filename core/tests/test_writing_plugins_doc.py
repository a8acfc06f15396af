"""The plugin in docs/writing-plugins.md ("State, config and storage — the one way") is run as
written: its table, its state under a typed key, its store setting."""

from __future__ import annotations

import importlib.util
import re
import sqlite3
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import anthropic
import pytest

from midway.config import ConfigError
from midway.storage import StoreURL
from midway.testing import RunningMidway, start_midway

DOCS = Path(__file__).resolve().parents[2] / "docs"
SECTION = "## State, config and storage — the one way"


def blocks(lang: str) -> list[str]:
    text = (DOCS / "writing-plugins.md").read_text()
    section = text[text.index(SECTION):]
    section = section[:section.find("\n## ", len(SECTION))]
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


@pytest.fixture
def model_gate(tmp_path: Path) -> ModuleType:
    [source] = [b for b in blocks("python") if b.startswith("# model_gate.py")]
    path = tmp_path / "model_gate.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("model_gate_from_docs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs resolves the annotations through it
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def ask(proxy: RunningMidway, model: str) -> int:
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-test", max_retries=0)
    try:
        client.messages.create(model=model, max_tokens=8,
                               messages=[{"role": "user", "content": "hi"}])
    except anthropic.APIStatusError as exc:
        return exc.status_code
    return 200


def test_the_documented_plugin_runs_as_written(fake_upstream, tmp_path: Path,
                                               model_gate: ModuleType,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    [toml] = blocks("toml")
    table = tomllib.loads(toml)
    monkeypatch.setenv("MODEL_GATE_STORE", "gate/counts.db")
    proxy = start_midway(tmp_path / "d", fake_upstream.url, [model_gate], table)
    try:
        assert ask(proxy, "claude-haiku-4-5") == 200
        assert ask(proxy, "claude-opus-4-1") == 403
        gate = proxy.midway.services.get(model_gate.GATE)
        assert gate is not None and gate.config.report_every == 600.0
        assert gate.config.store == StoreURL("sqlite", path=tmp_path / "d" / "gate" / "counts.db")
        assert proxy.call(gate.counts()) == {"claude-haiku-4-5": 1}
    finally:
        proxy.stop()
    assert proxy.midway.services.get(model_gate.GATE) is None  # shutdown let go of its state
    # the count outlived the instance: it is in the store the setting named
    with sqlite3.connect(tmp_path / "d" / "gate" / "counts.db") as db:
        assert db.execute("SELECT model, n FROM model_gate_counts").fetchall() == [
            ("claude-haiku-4-5", 1)]


def test_the_documented_error_is_what_users_see(tmp_path: Path, model_gate: ModuleType,
                                                fake_upstream) -> None:
    with pytest.raises(ConfigError) as info:
        start_midway(tmp_path, fake_upstream.url, [model_gate],
                     {"model_gate": {"models": "claude-*"}})
    message = str(info.value)
    assert message == ("[model_gate] models: expected a list (a string each), got 'claude-*'")
    assert message.replace("\n", " ") in " ".join((DOCS / "writing-plugins.md").read_text()
                                                  .split())
