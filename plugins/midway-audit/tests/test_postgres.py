"""The PostgreSQL store: same records and commands; several instances share one chain."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import anthropic
import orjson
from click.testing import CliRunner
from conftest import HEADERS, abandon_stream, committed, flush, get, records

import midway_audit
from midway.cli import cli
from midway.testing import Reply, pg_query, wait_for


def test_postgres_records_verify_and_cli(fake_upstream, audited, pg_config):
    running = audited(**pg_config)
    fake_upstream.reply(Reply(content=[{"type": "thinking", "thinking": "hm", "signature": "s"},
                                       {"type": "tool_use", "name": "Read",
                                        "input": {"path": "/etc/hosts"}}]))
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-pg", max_retries=0)
    with client.messages.stream(model="claude-opus-4-8", max_tokens=5,
                                messages=[{"role": "user", "content": "read it"}]) as stream:
        stream.get_final_message()
        midway_id = stream.response.headers["x-midway-request-id"]
    client.messages.create(model="claude-haiku-4-5", max_tokens=5,
                           messages=[{"role": "user", "content": "mail me at a@b.example"}])
    wait_for(lambda: len(records(running)) == 2)
    record = get(running, midway_id)
    message = orjson.loads(record["response_body"])
    assert message["content"][1]["input"] == {"path": "/etc/hosts"}
    assert message["content"][0]["signature"] == "s"
    assert [r["model"] for r in records(running, text="[redacted:email]")] == \
        ["claude-haiku-4-5"]  # ILIKE: case-insensitive
    assert records(running, status="2xx", principal=record["principal"])[0]["seq"] == 2
    flush(running)

    env = {"MIDWAY_AUDIT__STORE": pg_config["store"], "MIDWAY_AUDIT__SCHEMA":
           pg_config["schema"]}
    out = CliRunner().invoke(cli, ["audit", "verify", "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert orjson.loads(out.output)["checked"] == 2
    out = CliRunner().invoke(cli, ["audit", "query", "--json", "--model", "claude-opus-4-8"],
                             env=env)
    assert [r["id"] for r in orjson.loads(out.output)] == [midway_id]

    pg_query(pg_config["store"], "UPDATE audit_records SET status = 500 WHERE seq = 1",
             schema=pg_config["schema"])
    out = CliRunner().invoke(cli, ["audit", "verify", "--json"], env=env)
    assert out.exit_code == 1 and orjson.loads(out.output)["broken_seq"] == 1


def test_two_instances_append_to_one_chain(fake_upstream, midway_factory, pg_config):
    config = {"audit": {**pg_config, "batch_size": 8}}
    instances = [midway_factory(plugins=[("audit", midway_audit)], config=config)
                 for _ in range(2)]
    fake_upstream.fake.default = lambda rec: Reply(delay=0.002)

    async def load(url: str, n: int) -> None:
        async with aiohttp.ClientSession() as session:
            sem = asyncio.Semaphore(10)

            async def one(i: int) -> None:
                async with sem:
                    body = {"model": "claude-sonnet-4-6", "max_tokens": 5, "stream": i % 2 == 0,
                            "messages": [{"role": "user", "content": f"n{i}"}]}
                    if i % 10 == 0:
                        await abandon_stream(session, url, {**body, "stream": True})
                        return
                    async with session.post(f"{url}/v1/messages", json=body,
                                            headers=HEADERS) as resp:
                        await resp.read()

            await asyncio.gather(*(one(i) for i in range(n)))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda r: asyncio.run(load(r.url, 150)), instances))
    wait_for(lambda: sum(committed(r) for r in instances) >= 300, timeout=30)
    for running in instances:
        flush(running)
    probe = midway_factory(plugins=[("audit", midway_audit)], config=config)
    result = probe.call(probe.midway.services["audit"].verify())
    assert result["ok"], result
    assert result["checked"] == result["head_seq"] == 300
    assert len(records(probe)) == 300
