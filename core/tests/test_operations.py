"""Workers on one port, their per-worker and total figures, config check and db upgrade."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import orjson
from click.testing import CliRunner

from midway.cli import cli
from midway.testing import check_problems, free_port, run_cli, wait_for, wait_listening


def post(port: int) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/messages", method="POST",
        data=orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8,
                           "messages": [{"role": "user", "content": "hi"}]}),
        headers={"x-api-key": "sk-ant-k", "content-type": "application/json",
                 "connection": "close"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return int(resp.status)


def test_two_workers_share_a_port_and_report_totals(fake_upstream, tmp_path):
    port = free_port()
    env = {**os.environ, "MIDWAY_PLUGINS": "", "MIDWAY_ACCESS_LOG": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "midway.cli", "serve", "--port", str(port), "--workers", "2",
         "--upstream", fake_upstream.url, "--data-dir", str(tmp_path)], env=env,
        stderr=subprocess.PIPE)
    try:
        wait_listening(port)

        def status() -> dict[str, object]:
            result = CliRunner().invoke(cli, ["status", "--port", str(port), "--json",
                                              "--data-dir", str(tmp_path)])
            return json.loads(result.output) if result.exit_code == 0 else {"workers": []}
        wait_for(lambda: len(status()["workers"]) == 2, timeout=20)
        assert [post(port) for _ in range(40)] == [200] * 40
        wait_for(lambda: status()["totals"]["requests"] == 40, timeout=10)
        per_worker = [w["requests"] for w in status()["workers"]]
        assert sum(per_worker) == 40
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        counts = [float(v) for v in re.findall(r'^midway_requests_total\{.*\} (\S+)$', text,
                                               flags=re.M)]
        assert sum(counts) == 40
        assert set(re.findall(r'worker="(\d)"', text)) == {"0", "1"}
        assert len(fake_upstream.messages_requests) == 40
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_config_check_reports_each_problem(tmp_path):
    code, out = run_cli(tmp_path, "", ["config", "check", "--json"],
                        '[midway]\nupstream_api_key = "env:MIDWAY_TEST_NOT_SET"\n'
                        '[[midway.client_keys]]\nkey = "file:/nonexistent/key"\nname = "alice"\n')
    assert code == 1
    problems = check_problems(out, "core")
    assert any("MIDWAY_TEST_NOT_SET" in p for p in problems)
    assert any("alice" in p and "/nonexistent/key" in p for p in problems)
    code, out = run_cli(tmp_path, "", ["config", "check"], '[midway]\nport = 8999\n')
    assert code == 0, out
    assert "core: ok" in out


def test_sigterm_lets_open_streams_finish_then_exits_zero(fake_upstream, tmp_path):
    import asyncio

    import aiohttp

    from midway.testing import Reply

    port = free_port()
    fake_upstream.reply(*[Reply(delay=0.1, text_chunks=15) for _ in range(5)])
    env = {**os.environ, "MIDWAY_PLUGINS": "", "MIDWAY_ACCESS_LOG": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "midway.cli", "serve", "--port", str(port), "--upstream",
         fake_upstream.url, "--data-dir", str(tmp_path)], env=env, stderr=subprocess.PIPE)

    wait_listening(port)

    async def streams() -> list[bytes]:
        async with aiohttp.ClientSession() as session:
            async def one() -> bytes:
                async with session.post(
                        f"http://127.0.0.1:{port}/v1/messages", headers={"x-api-key": "k"},
                        data=orjson.dumps({"model": "m", "max_tokens": 5, "stream": True,
                                           "messages": [{"role": "user", "content": "x"}]})
                ) as resp:
                    first = await resp.content.readuntil(b"\n\n")
                    started.set_result(None) if not started.done() else None
                    return first + await resp.read()
            started = asyncio.get_running_loop().create_future()
            tasks = [asyncio.create_task(one()) for _ in range(5)]
            await started
            wait_for(lambda: len(fake_upstream.messages_requests) == 5, timeout=10)
            proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)
    bodies = asyncio.run(streams())
    assert all(body.rstrip().endswith(b'{"type":"message_stop"}') for body in bodies)
    assert proc.wait(30) == 0


def test_a_worker_that_dies_is_replaced(fake_upstream, tmp_path):
    port = free_port()
    env = {**os.environ, "MIDWAY_PLUGINS": "", "MIDWAY_ACCESS_LOG": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "midway.cli", "serve", "--port", str(port), "--workers", "2",
         "--upstream", fake_upstream.url, "--data-dir", str(tmp_path)], env=env,
        stderr=subprocess.PIPE)
    try:
        def workers() -> dict[int, int]:
            result = CliRunner().invoke(cli, ["status", "--port", str(port), "--json",
                                              "--data-dir", str(tmp_path)])
            if result.exit_code != 0:
                return {}
            return {w["worker"]: w["pid"] for w in json.loads(result.output)["workers"]
                    if w["alive"]}
        wait_for(lambda: len(workers()) == 2, timeout=20)
        victim = workers()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: workers().get(0) not in (None, victim), timeout=20)
        assert post(port) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
