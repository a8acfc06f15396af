"""Start-up as a person meets it: a configuration mistake is one line saying what, where and
the fix, and ``midway serve`` exits non-zero without a traceback; what works but is probably
wrong is a warning; the start-up lines say where midway listens, keeps its data and what each
plugin does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from midway.testing import free_port, wait_for


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
          plugins: str = "") -> subprocess.CompletedProcess[str]:
    """``midway serve ARGS`` that is expected to stop by itself (bounded)."""
    full_env = {**os.environ, "MIDWAY_PLUGINS": plugins, **(env or {})}
    return subprocess.run([sys.executable, "-m", "midway.cli", "serve", "--data-dir",
                           str(tmp_path / "data"), *args], env=full_env, capture_output=True,
                          text=True, timeout=60)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_port_in_use_is_one_line_naming_the_port_and_the_fix(tmp_path):
    port = free_port()
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        line = one_line_error(serve(tmp_path, "--port", str(port)))
    finally:
        taken.close()
    assert f"port {port} on 127.0.0.1 is in use" in line
    assert "--port" in line


def test_unknown_key_in_a_plugin_table_says_where_and_the_nearest_key(tmp_path):
    # The table's plugin is a --plugin file declaring its table with midway.options.
    plugin = tmp_path / "echo_table.py"
    plugin.write_text(
        "import attrs\nfrom midway import hookimpl\nfrom midway.options import option\n"
        "@attrs.frozen\nclass Echo:\n    enabled: bool = option(True, help='on')\n"
        "@hookimpl\ndef startup(midway):\n    midway.options('echo', Echo)\n")
    config = tmp_path / "midway.toml"
    config.write_text("[echo]\nenabeld = true\n")
    line = one_line_error(serve(tmp_path, "--port", str(free_port()), "--config", str(config),
                                "--plugin", str(plugin)))
    assert line == f"Error: {config}: [echo] enabeld: unknown setting; did you mean `enabled`?"


def test_missing_env_var_of_admin_key_names_the_variable(tmp_path):
    config = tmp_path / "midway.toml"
    config.write_text('[midway]\nadmin_key = "env:MIDWAY_TEST_NO_SUCH_ADMIN"\n')
    env = {k: v for k, v in os.environ.items() if k != "MIDWAY_TEST_NO_SUCH_ADMIN"}
    result = subprocess.run(
        [sys.executable, "-m", "midway.cli", "serve", "--data-dir", str(tmp_path / "d"),
         "--port", str(free_port()), "--config", str(config)],
        env={**env, "MIDWAY_PLUGINS": ""}, capture_output=True, text=True, timeout=60)
    line = one_line_error(result)
    assert "[midway] admin_key: environment variable MIDWAY_TEST_NO_SUCH_ADMIN is not set" in line
    assert "export MIDWAY_TEST_NO_SUCH_ADMIN" in line


def test_missing_env_var_in_a_plugin_table_is_one_line(tmp_path):
    plugin = tmp_path / "keyed.py"
    plugin.write_text(
        "from midway import hookimpl\nfrom midway.secrets_ref import resolve\n"
        "@hookimpl\ndef startup(midway):\n"
        "    resolve(midway.config('keyed')['key'])\n")
    config = tmp_path / "midway.toml"
    config.write_text('[keyed]\nkey = "env:MIDWAY_TEST_NO_SUCH_KEY"\n')
    line = one_line_error(serve(tmp_path, "--port", str(free_port()), "--config", str(config),
                                "--plugin", str(plugin)))
    assert "[keyed] environment variable MIDWAY_TEST_NO_SUCH_KEY is not set" in line


def test_unknown_plugin_name_is_an_error(tmp_path):
    line = one_line_error(serve(tmp_path, "--port", str(free_port()),
                                plugins="midway_no_such_plugin"))
    assert "MIDWAY_PLUGINS: no installed plugin is called 'midway_no_such_plugin'" in line
    assert "installed: " in line


def test_missing_plugin_module_fails_start_up(tmp_path):
    line = one_line_error(serve(tmp_path, "--port", str(free_port()),
                                "--plugin", "midway_no_such_module_anywhere"))
    assert "--plugin midway_no_such_module_anywhere: no module named" in line


def test_plugin_file_failing_at_import_fails_start_up(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("raise RuntimeError('boom at import')\n")
    result = serve(tmp_path, "--port", str(free_port()), "--plugin", str(plugin))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == f"Error: --plugin {plugin}: failed to load: boom at import"


def test_upstream_ending_in_v1_warns_and_start_up_lines_say_what_runs(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    plugin = tmp_path / "says.py"
    plugin.write_text("from midway import hookimpl\n@hookimpl\ndef describe(midway):\n"
                      "    return f'says hello from {midway.settings.port}'\n")
    upstream = "http://127.0.0.1:9"  # never asked: the test sends no request
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "midway.cli", "serve", "--port", str(port), "--upstream",
             upstream + "/v1", "--data-dir", str(tmp_path / "data"), "--plugin",
             str(plugin)], env={**os.environ, "MIDWAY_PLUGINS": ""}, stderr=out)
        try:
            wait_for(lambda: "listening on" in log.read_text(), timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    text = log.read_text()
    assert f"WARNING midway: upstream {upstream}/v1 ends in /v1" in text
    assert f"use {upstream}" in text
    assert f"data dir {tmp_path / 'data'}" in text
    assert "plugins: says" in text
    assert f"  says: says hello from {port}" in text


def test_read_commands_never_create_a_store(tmp_path):
    typo = tmp_path / "data-typo"
    env = {**os.environ, "MIDWAY_PLUGINS": ""}
    for args in (["keys", "list"], ["keys", "show", "k_x"], ["keys", "revoke", "k_x"]):
        result = subprocess.run([sys.executable, "-m", "midway.cli", *args, "--data-dir",
                                 str(typo)], env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1, result
        assert result.stderr.strip() == (
            f"Error: no keys store exists at {typo / 'keys.db'}: nothing was recorded there "
            "(is --data-dir, MIDWAY_DATA_DIR or the store setting right?)")
        assert not typo.exists()
    # Issuing a key creates the store; reading it then works.
    created = subprocess.run([sys.executable, "-m", "midway.cli", "keys", "create", "--name",
                              "a", "--data-dir", str(typo)], env=env, capture_output=True,
                             text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    listed = subprocess.run([sys.executable, "-m", "midway.cli", "keys", "list", "--data-dir",
                             str(typo)], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and " a " in f" {listed.stdout} ", listed


def test_a_mistake_found_by_workers_is_said_once_and_not_restarted(tmp_path):
    plugin = tmp_path / "echo_table.py"
    plugin.write_text(
        "import attrs\nfrom midway import hookimpl\nfrom midway.options import option\n"
        "@attrs.frozen\nclass Echo:\n    enabled: bool = option(True, help='on')\n"
        "@hookimpl\ndef startup(midway):\n    midway.options('echo', Echo)\n")
    config = tmp_path / "midway.toml"
    config.write_text("[echo]\nenabeld = true\n")
    line = one_line_error(serve(tmp_path, "--port", str(free_port()), "--config", str(config),
                                "--plugin", str(plugin), "--workers", "2"))
    assert line == f"Error: {config}: [echo] enabeld: unknown setting; did you mean `enabled`?"


def test_unknown_core_setting_suggests_the_nearest(tmp_path):
    config = tmp_path / "midway.toml"
    config.write_text("[midway]\nprot = 9000\n")
    line = one_line_error(serve(tmp_path, "--config", str(config)))
    assert line == f"Error: {config}: [midway] prot: unknown setting; did you mean `port`?"


def test_a_mistake_found_by_another_worker_than_the_first_is_said(tmp_path):
    # Whichever worker finds it first says it: here only worker 1 does (worker 0 would serve).
    plugin = tmp_path / "second_worker.py"
    plugin.write_text(
        "from midway import hookimpl\nfrom midway.config import ConfigError\n"
        "@hookimpl\ndef startup(midway):\n"
        "    if midway.worker_index == 1:\n"
        "        raise ConfigError('[second] only worker 1 minds')\n")
    result = serve(tmp_path, "--port", str(free_port()), "--plugin", str(plugin),
                   "--workers", "2")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: [second] only worker 1 minds"], result.stderr


def test_a_workers_mistake_is_one_write_to_stderr(tmp_path):
    # Workers share stderr: the line must go out in one write, or another worker's log line
    # can land between its text and its newline (CI saw it with print's two writes).
    from midway.config import ConfigError
    from midway.supervisor import _child

    said_r, said_w = os.pipe()
    os.write(said_w, b"!")
    os.close(said_w)
    out = tmp_path / "writes"
    pid = os.fork()
    if pid == 0:  # the child records each write to stderr, one per line of the file
        writes = open(out, "w")  # noqa: SIM115 (the child ends in os._exit)

        class Recorder:
            def write(self, text: str) -> int:
                writes.write(repr(text) + "\n")
                writes.flush()
                return len(text)

            def flush(self) -> None:
                pass

        sys.stderr = Recorder()  # type: ignore[assignment]

        def work(index: int, supervisor: int) -> None:
            raise ConfigError("[second] a mistake")

        _child(1, work, -1, said_r, ())
    _, status = os.waitpid(pid, 0)
    os.close(said_r)
    assert os.waitstatus_to_exitcode(status) != 0
    assert out.read_text().splitlines() == [repr("Error: [second] a mistake\n")]
