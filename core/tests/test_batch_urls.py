"""Batch objects midway relays name midway's results path, never the upstream's host (the
SDKs' ``batches.results()`` follow ``results_url`` with the client's key)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from midway import batch_urls
from midway.testing import FakeUpstream, RunningMidway

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
    port = running.url.rsplit(":", 1)[1]
    ended = client.messages.batches.retrieve(batch_id)
    assert ended.results_url == \
        f"http://127.0.0.1:{port}/v1/messages/batches/{batch_id}/results"
    # Without midway's rewrite this would go to api.anthropic.com (unreachable here).
    assert [r.custom_id for r in client.messages.batches.results(batch_id)] == ["r0", "r1"]
    assert fake_upstream.requests[-1].path == f"/v1/messages/batches/{batch_id}/results"
    listed = get(running.url, "/v1/messages/batches", "sk-ant-client",
                 host=f"localhost:{port}").json()
    assert [b["results_url"] for b in listed["data"]] == \
        [f"http://localhost:{port}/v1/messages/batches/{batch_id}/results"]
    # What the upstream itself answers is untouched.
    direct = get(fake_upstream.url, f"/v1/messages/batches/{batch_id}", "sk-ant-client")
    assert direct.json()["results_url"].startswith(ANTHROPIC)


@pytest.mark.parametrize("mode", ["client keys", "allowed_hosts"])
def test_a_host_midway_cannot_vouch_for_is_not_reflected(mode: str, midway_factory: Factory,
                                                         fake_upstream: FakeUpstream) -> None:
    if mode == "client keys":  # any Host is let in: the key is what counts
        running = midway_factory(config={"midway": {"client_keys": [
            {"key": "mk-test", "name": "t"}]}}, upstream_api_key="sk-ant-upstream")
        key = "mk-test"
    else:  # a name of this gateway, but midway cannot tell which scheme reached it
        running = midway_factory(allowed_hosts=["gw.example"])
        key = "sk-ant-client"
    batch_id = submit(running.url, key)
    for host in ("evil.example", "gw.example", "evil.example:443/x?", "localhost@evil.example"):
        if mode == "allowed_hosts" and host != "gw.example":
            continue  # refused at the door (tests/test_security)
        ended = get(running.url, f"/v1/messages/batches/{batch_id}", key, host=host).json()
        # The path alone: the SDKs resolve it against the base URL the client used.
        assert ended["results_url"] == f"/v1/messages/batches/{batch_id}/results", host
    client = anthropic.Anthropic(base_url=running.url, api_key=key, max_retries=0,
                                 default_headers={"host": "gw.example"})
    assert [r.custom_id for r in client.messages.batches.results(batch_id)] == ["r0"]


def request(host: str) -> web.Request:
    return make_mocked_request("GET", "/v1/messages/batches", headers={"host": host})


def test_rewrite() -> None:
    local = request("localhost:8080")
    body = (b'{"data": [{"id": "msgbatch_01a", "results_url": "https://api.anthropic.com/v1/'
            b'messages/batches/msgbatch_01a/results"}, {"id": "msgbatch_01b", '
            b'"results_url": null}, {"id": "../../x", "results_url": "https://evil/"}]}')
    rewritten = batch_urls.rewrite(body, local)
    assert rewritten is not None
    assert [b["results_url"] for b in orjson.loads(rewritten)["data"]] == [
        "http://localhost:8080/v1/messages/batches/msgbatch_01a/results", None, None]
    assert batch_urls.rewrite(rewritten, local) is None
    assert batch_urls.rewrite(b"not json", local) is None
    assert batch_urls.rewrite(b"[1]", local) is None
    for host in ("evil.example", "127.0.0.1.evil.example", "localhost:80@evil", "", "[::1"):
        assert batch_urls.base(request(host)) == "", host
    assert batch_urls.base(request("[::1]:9")) == "http://[::1]:9"
