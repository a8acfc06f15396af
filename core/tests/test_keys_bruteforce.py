"""10,000 wrong keys against a real ``midway serve`` process: always the same 401, bounded CPU,
no upstream contact, and the real key keeps working."""

import asyncio
import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from keys_support import ask, http, run_cli, write_config

from midway.testing import free_port, wait_for

ATTEMPTS = 10_000
CPU_PER_ATTEMPT_LIMIT = 0.002  # seconds; generous: a 401 costs a fraction of that


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrong_keys(real):
    prefix, secret = real.split("_", 1)
    token = lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()  # noqa: E731
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    keys = []
    for i in range(ATTEMPTS):
        kind = i % 10
        if kind < 4:  # the real prefix with a wrong secret: the constant-time comparison
            keys.append(f"{prefix}_{token()}")
        elif kind < 8:  # well-formed keys with unknown prefixes: the store is asked
            keys.append("mw-" + "".join(secrets.choice(alphabet) for _ in range(12)) +
                        "_" + token())
        elif kind == 8:  # the real key with its last character changed
            last = "A" if secret[-1] != "A" else "B"
            keys.append(f"{prefix}_{secret[:-1]}{last}")
        else:  # malformed
            keys.append(secrets.choice(["mw-", "sk-ant-api03-" + token(), real[:-1],
                                        real + "x", "x" * 300, token()]))
    return keys


async def hammer(url, keys):
    body = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8,
                         "messages": [{"role": "user", "content": "hi"}]})
    answers = set()
    statuses = set()
    queue = list(enumerate(keys))

    async def worker(session):
        while queue:
            i, key = queue.pop()
            header = {"x-api-key": key} if i % 2 else {"authorization": f"Bearer {key}"}
            async with session.post(url + "/v1/messages", data=body,
                                    headers={**header, "content-type": "application/json",
                                             "anthropic-version": "2023-06-01"}) as resp:
                payload = orjson.loads(await resp.read())
                payload.pop("request_id", None)  # unique per request, by design
                statuses.add((resp.status, resp.headers.get("x-should-retry")))
                answers.add(orjson.dumps(payload))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(16)))
    return statuses, answers


@pytest.fixture
def server(tmp_path, fake_upstream):
    keys = {"enabled": True, "store": str(tmp_path / "keys.db")}
    config = write_config(tmp_path, keys)
    port = free_port()
    config.write_text(f'[midway]\nupstream = "{fake_upstream.url}"\nport = {port}\n'
                      'plugins = []\naccess_log = false\n' + config.read_text())
    issued = run_cli(config, "create", "--name", "real", "--team", "t")
    proc = subprocess.Popen([sys.executable, "-m", "midway.cli", "serve", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def up():
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            return http("GET", url + "/healthz")[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=30)
        yield url, proc.pid, issued["secret"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_ten_thousand_wrong_keys(server, fake_upstream):
    url, pid, real = server
    assert ask(url, real).content
    upstream_before = len(fake_upstream.requests)
    keys = wrong_keys(real)
    cpu_before = cpu_seconds(pid)
    statuses, answers = asyncio.run(hammer(url, keys))
    cpu = cpu_seconds(pid) - cpu_before
    assert statuses == {(401, None)}
    assert len(answers) == 1
    assert orjson.loads(answers.pop()) == {
        "type": "error", "error": {"type": "authentication_error",
                                   "message": "invalid x-api-key"}}
    assert len(fake_upstream.requests) == upstream_before
    per_attempt = cpu / ATTEMPTS
    print(f"server CPU per wrong key: {per_attempt * 1e6:.0f} µs ({cpu:.2f} s in all)")
    assert per_attempt < CPU_PER_ATTEMPT_LIMIT
    assert ask(url, real).content  # the flood evicted nothing that matters
