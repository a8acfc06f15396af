"""Batch objects midway relays name midway's results path, never the upstream's host (the
SDKs' ``batches.results()`` follow ``results_url`` with the client's key)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from aiohttp import web

from midway import batch_urls
from midway.testing import FakeUpstream, RunningMidway, ServerThread

Factory = Callable[..., RunningMidway]

PARAMS = {"model": "claude-haiku-4-5", "max_tokens": 5,
          "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC = "https://api.anthropic.com"


def submit(url: str, key: str, n: int = 1) -> str:
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    requests: Any = [{"custom_id": f"r{i}", "params": PARAMS} for i in range(n)]
    return client.messages.batches.create(requests=requests).id


def get(url: str, path: str, key: str, host: str | None = None) -> httpx.Response:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    if host is not None:
        headers["host"] = host
    answer = httpx.get(f"{url}{path}", headers=headers)
    assert answer.status_code == 200, answer.text
    return answer


def test_sdk_reads_results_through_midway(midway_factory: Factory,
                                          fake_upstream: FakeUpstream) -> None:
    fake_upstream.fake.batches.results_origin = ANTHROPIC  # as Anthropic names itself
    running = midway_factory()
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-client", max_retries=0)
    batch_id = submit(running.url, "sk-ant-client", 2)
    ours = f"/v1/messages/batches/{batch_id}/results"
    assert client.messages.batches.retrieve(batch_id).results_url == ours
    # Without midway's rewrite this would go to api.anthropic.com (unreachable here).
    assert [r.custom_id for r in client.messages.batches.results(batch_id)] == ["r0", "r1"]
    assert fake_upstream.requests[-1].path == ours
    listed = get(running.url, "/v1/messages/batches", "sk-ant-client").json()
    assert [b["results_url"] for b in listed["data"]] == [ours]
    canceled = httpx.post(f"{running.url}/v1/messages/batches/{batch_id}/cancel",
                          headers={"x-api-key": "sk-ant-client",
                                   "anthropic-version": "2023-06-01"})
    assert canceled.json()["results_url"] == ours, canceled.text
    # What the upstream itself answers is untouched.
    direct = get(fake_upstream.url, f"/v1/messages/batches/{batch_id}", "sk-ant-client")
    assert direct.json()["results_url"].startswith(ANTHROPIC)


@pytest.mark.parametrize("mode", ["client keys", "allowed_hosts"])
def test_the_host_a_request_names_is_never_reflected(mode: str, midway_factory: Factory,
                                                     fake_upstream: FakeUpstream) -> None:
    if mode == "client keys":  # any Host is let in: the key is what counts
        running = midway_factory(config={"midway": {"client_keys": [
            {"key": "mk-test", "name": "t"}]}}, upstream_api_key="sk-ant-upstream")
        key = "mk-test"
        hosts = ["evil.example", "gw.example", "evil.example:443/x?", "localhost@evil.example",
                 "127.0.0.1"]
    else:  # names of this gateway, but a proxy may have set them (TLS ended, Host rewritten)
        running = midway_factory(allowed_hosts=["gw.example"])
        key = "sk-ant-client"
        hosts = ["gw.example", "127.0.0.1", "localhost:1"]
    batch_id = submit(running.url, key)
    for host in hosts:
        ended = get(running.url, f"/v1/messages/batches/{batch_id}", key, host=host).json()
        # The path alone: the SDKs resolve it against the base URL the client used.
        assert ended["results_url"] == f"/v1/messages/batches/{batch_id}/results", host
    client = anthropic.Anthropic(base_url=running.url, api_key=key, max_retries=0,
                                 default_headers={"host": "gw.example"})
    assert [r.custom_id for r in client.messages.batches.results(batch_id)] == ["r0"]


def test_rewrite() -> None:
    body = (b'{"data": [{"id": "msgbatch_01a", "results_url": "https://api.anthropic.com/v1/'
            b'messages/batches/msgbatch_01a/results"}, {"id": "msgbatch_01b", '
            b'"results_url": null}, {"id": "../../x", "results_url": "https://evil/"}, '
            b'{"id": "msgbatch_01c", "results_url": 7}], "has_more": false}')
    rewritten = batch_urls.rewrite(body)
    assert rewritten is not None
    assert [b["results_url"] for b in orjson.loads(rewritten)["data"]] == [
        "/v1/messages/batches/msgbatch_01a/results", None, None,
        "/v1/messages/batches/msgbatch_01c/results"]
    assert batch_urls.rewrite(rewritten) is None  # already midway's: sent as it came
    for other in (b"not json", b"[1]", b'{"type": "error"}', b'{"id": "x", "type": "x"}'):
        assert batch_urls.rewrite(other) is None
    assert batch_urls.applies("/v1/messages/batches/msgbatch_01a/cancel")
    assert not batch_urls.applies("/v1/messages/batches/msgbatch_01a/results")


@pytest.mark.parametrize("content_type, encoding", [("application/json", "gzip"),
                                                    ("text/plain", None)])
def test_compressed_or_mistyped_batch_answers(content_type: str, encoding: str | None,
                                              midway_factory: Factory) -> None:
    """An upstream that compresses a batch object, or does not call it JSON, still has its
    results_url rewritten (the client gets it decoded)."""
    batch = orjson.dumps({"id": "msgbatch_01z", "type": "message_batch",
                          "results_url": f"{ANTHROPIC}/v1/messages/batches/msgbatch_01z/results"})

    async def retrieve(request: web.Request) -> web.Response:
        body = gzip.compress(batch) if encoding else batch
        headers = {"content-encoding": encoding} if encoding else {}
        return web.Response(body=body, content_type=content_type, headers=headers)

    app = web.Application()
    app.router.add_get("/v1/messages/batches/{id}", retrieve)
    upstream = ServerThread(app).start()
    try:
        running = midway_factory(upstream=upstream.url)
        answer = get(running.url, "/v1/messages/batches/msgbatch_01z", "sk-ant-client")
        assert answer.json()["results_url"] == "/v1/messages/batches/msgbatch_01z/results"
        assert "content-encoding" not in answer.headers
    finally:
        upstream.stop()
