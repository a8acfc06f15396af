"""A missing optional dependency is one line naming the extra to install, not a
``ModuleNotFoundError`` (the README's install brings none of the extras): simulated by making
the module unimportable in this process (``sys.modules[name] = None``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from midway.cli import cli
from midway.testing import check_problems

HINT = "pip install './plugins/midway-cache[semantic]'"


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, *args: str
        ) -> tuple[int, str]:
    monkeypatch.setenv("MIDWAY_PLUGINS", "cache")
    config = tmp_path / "midway.toml"
    config.write_text(toml)
    result = CliRunner().invoke(cli, [*args, "--config", str(config),
                                      "--data-dir", str(tmp_path / "data")])
    assert not isinstance(result.exception, ImportError), result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize("missing", ["numpy", "onnxruntime", "onnx", "tokenizers"])
def test_cache_eval_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)
    # what importing the semantic modules would find: none of them loaded yet
    for name in ("midway_cache.evaluate", "midway_cache.embedders", "midway_cache.semantic"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    code, out = run(tmp_path, monkeypatch, "", "cache", "eval")
    assert code == 1
    (line,) = out.strip().splitlines()
    assert line == (f"Error: midway cache eval needs the [semantic] extra ({missing} is not "
                    f"installed): {HINT} (in a midway checkout; 'midway-cache[semantic]' from "
                    "a package index)")


def test_config_check_names_the_extra_of_a_semantic_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)
    code, out = run(tmp_path, monkeypatch, "[cache]\nsemantic = true\n",
                    "config", "check", "--json")
    assert code != 0
    problems = check_problems(out, "cache")
    assert any("[cache] semantic = true needs the [semantic] extra (numpy is not installed)"
               in p and HINT in p for p in problems), problems


def test_a_redis_store_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    code, out = run(tmp_path, monkeypatch, '[cache]\nstore = "redis://127.0.0.1:1"\n',
                    "cache", "stats")
    assert code == 1
    assert "a Redis [cache] store needs the [redis] extra (redis is not installed): " \
           "pip install './plugins/midway-cache[redis]'" in out
