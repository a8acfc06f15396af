"""The command line: plugins listing, settings precedence, the mock upstream command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
from click.testing import CliRunner

from midway.cli import cli
from midway.config import load_settings
from midway.testing import free_port, wait_listening


def test_plugins_json_lists_name_version_hooks(monkeypatch):
    monkeypatch.delenv("MIDWAY_PLUGINS", raising=False)
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0
    plugins = json.loads(result.output)
    assert isinstance(plugins, list)
    for plugin in plugins:
        assert {"name", "version", "hooks", "source", "error"} <= set(plugin)
    monkeypatch.setenv("MIDWAY_PLUGINS", "")
    # MIDWAY_PLUGINS filters installed plugins, never the built-in ones (midway.builtins)
    listed = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    assert [(p["name"], p["source"]) for p in listed] == [("keys", "built-in"),
                                                         ("client_keys", "built-in")]


def test_extra_plugin_files_are_listed(tmp_path, monkeypatch):
    plugin = tmp_path / "team_tag.py"
    plugin.write_text("from midway import hookimpl\n@hookimpl\ndef pre_request(exchange):\n"
                      "    pass\n")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    config = tmp_path / "midway.toml"
    config.write_text(f'[midway]\nplugins = []\nextra_plugins = ["{plugin}", "{broken}"]\n')
    monkeypatch.setenv("MIDWAY_CONFIG", str(config))
    monkeypatch.delenv("MIDWAY_PLUGINS", raising=False)
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    listed = {p["name"]: p for p in json.loads(result.output)}
    assert listed["team_tag"]["hooks"] == ["pre_request"]
    assert listed["team_tag"]["source"] == f"file {plugin}"
    assert "boom at import" in listed["broken"]["error"]
    text = CliRunner().invoke(cli, ["plugins"]).output
    assert "FAILED" in text and "team_tag" in text


def test_settings_precedence_file_then_env_then_flags(tmp_path):
    config = tmp_path / "midway.toml"
    config.write_text('[midway]\nport = 9001\nidle_timeout = 30\nupstream = "http://a.test"\n'
                      '[audit]\nstore = "sqlite"\n')
    env = {"MIDWAY_CONFIG": str(config), "MIDWAY_PORT": "9002", "MIDWAY_DATA_DIR": "/tmp/mw-x",
           "MIDWAY_AUDIT__STORE": "postgresql://db/x"}
    settings = load_settings(environ=env, port=9003)
    assert settings.port == 9003
    assert settings.idle_timeout == 30.0
    assert settings.upstream == "http://a.test"
    assert settings.data_dir == Path("/tmp/mw-x")
    assert load_settings(environ=env).port == 9002
    os.environ["MIDWAY_AUDIT__STORE"] = "postgresql://db/x"
    try:
        assert settings.plugin_config("audit") == {"store": "postgresql://db/x"}
    finally:
        del os.environ["MIDWAY_AUDIT__STORE"]


def test_bad_config_is_a_clear_error(tmp_path):
    config = tmp_path / "midway.toml"
    config.write_text("[midway]\nport = 'eighty'\n")
    result = CliRunner().invoke(cli, ["serve", "--config", str(config)])
    assert result.exit_code != 0 and "port must be int" in result.output
    config.write_text("[midway]\nprot = 1\n")
    result = CliRunner().invoke(cli, ["serve", "--config", str(config)])
    assert "[midway] prot: unknown setting; did you mean `port`?" in result.output


def test_mock_upstream_command_serves_the_fake_api():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "midway.cli", "mock-upstream", "--port",
                             str(port)], stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/messages", method="POST",
            data=orjson.dumps({"model": "claude-haiku-4-5", "max_tokens": 5,
                               "messages": [{"role": "user", "content": "hi"}]}))
        with urllib.request.urlopen(request, timeout=10) as resp:
            message = json.loads(resp.read())
        assert message["type"] == "message" and message["model"] == "claude-haiku-4-5"
        assert message["usage"]["input_tokens"] > 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_root_config_selects_the_plugins_listed(tmp_path, monkeypatch):
    plugin = tmp_path / "only_me.py"
    plugin.write_text("from midway import hookimpl\n\n@hookimpl\ndef pre_request(exchange):\n"
                      "    pass\n")
    config = tmp_path / "midway.toml"
    config.write_text(f'[midway]\nplugins = []\nextra_plugins = ["{plugin}"]\n')
    monkeypatch.delenv("MIDWAY_CONFIG", raising=False)
    monkeypatch.delenv("MIDWAY_PLUGINS", raising=False)
    for args in (["--config", str(config), "plugins", "--json"],
                 ["plugins", "--config", str(config), "--json"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert [p["name"] for p in json.loads(result.output)] == ["keys", "client_keys", "only_me"]


def test_config_show_prints_plugin_tables_with_credentials_masked(tmp_path, monkeypatch):
    config = tmp_path / "midway.toml"
    config.write_text(
        '[midway]\nadmin_key = "admin-literal-canary"\n'
        '[audit]\nstore = "postgresql://midway:pg-canary@db.internal/audit"\n'
        '[router]\n[[router.upstreams]]\nname = "a"\nurl = "https://api.anthropic.com"\n'
        'keys = ["sk-ant-literal-canary", "env:TEAM_KEY"]\n')
    monkeypatch.setenv("MIDWAY_CACHE__TTL", "1h")
    monkeypatch.delenv("MIDWAY_ADMIN_KEY", raising=False)
    result = CliRunner().invoke(cli, ["--config", str(config), "config", "show"])
    assert result.exit_code == 0, result.output
    for canary in ("admin-literal-canary", "pg-canary", "sk-ant-literal-canary"):
        assert canary not in result.output
    shown = json.loads(result.output)
    assert shown["config_path"] == str(config)
    assert shown["admin_key"].startswith("(set: fingerprint ")
    assert shown["tables"]["audit"]["store"] == "postgresql://midway:***@db.internal/audit"
    upstream = shown["tables"]["router"]["upstreams"][0]
    assert upstream["url"] == "https://api.anthropic.com"
    assert upstream["keys"][1] == "env:TEAM_KEY"  # a reference says where, not what
    assert shown["tables"]["cache"] == {"ttl": "1h"}  # from MIDWAY_CACHE__TTL
