"""Start-up and ``config check`` with the installed plugins, as real processes: a mistyped
plugin name or table key, an unset credential, and what each plugin says it does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from midway.testing import free_port, wait_for


def midway(tmp_path: Path, *args: str, plugins: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "MIDWAY_PLUGINS": plugins, **(env or {})}
    return subprocess.run([sys.executable, "-m", "midway.cli", *args, "--data-dir",
                           str(tmp_path / "data")], env=full_env, capture_output=True,
                          text=True, timeout=60)


def test_unknown_plugin_name_fails_serve_and_config_check(tmp_path):
    served = midway(tmp_path, "serve", "--port", str(free_port()), plugins="audit,biling")
    assert served.returncode == 1 and "Traceback" not in served.stderr, served.stderr
    assert served.stderr.strip().splitlines() == [
        "Error: MIDWAY_PLUGINS: no installed plugin is called 'biling'; did you mean "
        "`billing`? installed: audit, billing, cache, dashboard, identity, otel, router"]
    checked = midway(tmp_path, "config", "check", plugins="audit,biling")
    assert checked.returncode == 1
    assert "no installed plugin is called 'biling'" in checked.stdout


def test_unknown_plugin_name_in_the_config_file(tmp_path):
    config = tmp_path / "midway.toml"
    config.write_text('[midway]\nplugins = ["audit", "cach"]\n')
    env = {k: v for k, v in os.environ.items() if k != "MIDWAY_PLUGINS"}
    result = subprocess.run([sys.executable, "-m", "midway.cli", "serve", "--config",
                             str(config), "--port", str(free_port()), "--data-dir",
                             str(tmp_path / "data")], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"Error: {config}: [midway] plugins: no installed plugin is called 'cach'; did you "
        "mean `cache`? installed: audit, billing, cache, dashboard, identity, otel, router")


def test_typo_in_cache_table_is_one_line_with_the_nearest_key(tmp_path):
    config = tmp_path / "midway.toml"
    config.write_text("[cache]\nenabeld = true\n")
    result = midway(tmp_path, "serve", "--config", str(config), "--port", str(free_port()),
                    plugins="cache")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (
        f"Error: {config}: [cache] enabeld: unknown setting; did you mean `enabled`?")


def test_unset_router_key_variable_is_one_line_naming_it(tmp_path):
    config = tmp_path / "midway.toml"
    config.write_text('[[router.upstreams]]\nname = "main"\nurl = "https://api.anthropic.com"\n'
                      'keys = ["env:MIDWAY_TEST_UNSET_KEY"]\n')
    env = {k: v for k, v in os.environ.items() if k != "MIDWAY_TEST_UNSET_KEY"}
    result = subprocess.run([sys.executable, "-m", "midway.cli", "serve", "--config",
                             str(config), "--port", str(free_port()), "--data-dir",
                             str(tmp_path / "data")], env={**env, "MIDWAY_PLUGINS": "router"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (
        "Error: [router] upstream 'main': environment variable MIDWAY_TEST_UNSET_KEY is not "
        "set; set it, or change the reference in [router]")


def test_missing_plugin_module_fails_start_up_once(tmp_path):
    result = midway(tmp_path, "serve", "--port", str(free_port()), "--plugin",
                    "midway_team_tag_missing", plugins="audit")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: --plugin midway_team_tag_missing: no module named 'midway_team_tag_missing' "
        "on this Python's path; install it, or give the path of a .py file"]


def test_config_check_reports_every_problem_in_words(tmp_path):
    config = tmp_path / "midway.toml"
    config.write_text('[cache]\nenabeld = true\nttl = "soon"\n'
                      '[[router.upstreams]]\nname = "main"\nurl = "https://api.anthropic.com"\n'
                      'keys = ["env:MIDWAY_TEST_UNSET_A", "env:MIDWAY_TEST_UNSET_B"]\n')
    result = midway(tmp_path, "config", "check", "--config", str(config),
                    plugins="cache,router")
    assert result.returncode == 1
    out = result.stdout
    assert f"  - {config}: [cache] enabeld: unknown setting; did you mean `enabled`?" in out
    assert f"  - {config}: [cache] ttl: expected a duration" in out
    assert ("  - [router] upstream 'main': environment variable MIDWAY_TEST_UNSET_A is not "
            "set; environment variable MIDWAY_TEST_UNSET_B is not set") in out
    assert "Error:" not in out and "Exception" not in out


def test_start_up_lines_say_what_each_plugin_does(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "MIDWAY_PLUGINS": "audit,billing,cache,dashboard,identity,otel,router"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "midway.cli", "serve", "--port", str(port), "--data-dir",
             str(tmp_path / "data")], env=env, stderr=out)
        try:
            wait_for(lambda: "  router: " in log.read_text(), timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    text = log.read_text()
    assert f"listening on http://127.0.0.1:{port}" in text
    assert f"data dir {tmp_path / 'data'}" in text
    assert "plugins: audit, billing, cache, dashboard, identity, otel, router" in text
    lines = {name: next((line for line in text.splitlines()
                         if f"INFO midway:   {name}: " in line), "")
             for name in ("audit", "billing", "cache", "dashboard", "identity", "otel",
                          "router")}
    assert all(lines.values()), text
    assert f"http://127.0.0.1:{port}/_midway/" in lines["dashboard"]
    assert str(tmp_path / "data") in lines["audit"]
    # what each does by default: caching only when asked, bodies kept 30 days
    assert "only requests sending x-midway-cache: use" in lines["cache"]
    assert "bodies deleted after 30d" in lines["audit"]
    assert lines["otel"].endswith("otel: no endpoint set: exports nothing")
    assert "off until [identity] issuer is set" in lines["identity"]


def test_plugin_read_commands_never_create_a_store(tmp_path):
    typo = tmp_path / "data-typo"
    for args, store in ((["audit", "query"], "audit.db"), (["audit", "verify"], "audit.db"),
                        (["billing", "report"], "billing.db"),
                        (["billing", "budgets"], "billing.db"),
                        (["cache", "stats"], "cache.db")):
        env = {**os.environ, "MIDWAY_PLUGINS": "audit,billing,cache"}
        result = subprocess.run([sys.executable, "-m", "midway.cli", *args, "--data-dir",
                                 str(typo)], env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1, result
        assert result.stderr.startswith(f"Error: no {store[:-3]} store exists at "
                                        f"{typo / store}: "), result.stderr
        assert not typo.exists(), args


def test_router_upstream_ending_in_v1_warns(tmp_path):
    config = tmp_path / "midway.toml"
    config.write_text('[[router.upstreams]]\nname = "gw"\nurl = "http://127.0.0.1:9/v1"\n')
    log = tmp_path / "serve.log"
    env = {**os.environ, "MIDWAY_PLUGINS": "router"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "midway.cli", "serve", "--port", str(free_port()),
             "--config", str(config), "--data-dir", str(tmp_path / "data")], env=env,
            stderr=out)
        try:
            wait_for(lambda: "listening on" in log.read_text(), timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert ("WARNING midway.router: [router] upstream 'gw' http://127.0.0.1:9/v1 ends in /v1, "
            "but clients' paths already start with /v1 (requests would go to "
            "http://127.0.0.1:9/v1/v1/messages); use http://127.0.0.1:9") in log.read_text()
