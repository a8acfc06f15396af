"""Fallback chains: an upstream dies mid-run; requests not yet started move to the fallback,
streams already started end with an error event, and nothing is spliced."""

from __future__ import annotations

import threading
import time

import anthropic
import pytest
from conftest import key_of, raw_post, wait_idle

from midway.testing import Reply, wait_for

MSG = {"model": "claude-sonnet-4-6", "max_tokens": 16,
       "messages": [{"role": "user", "content": "hi"}]}


def chain_config(primary, backup, **extra):
    return {"router": {
        "upstreams": [{"name": "primary", "url": primary, "keys": ["sk-ant-primary"]},
                      {"name": "backup", "url": backup, "keys": ["sk-ant-backup"]}],
        "rules": [{"name": "chain", "match": {"model": "claude-*"}, "target": "primary",
                   "fallback": ["backup"]}],
        "backoff_base": 0.0, **extra}}


def events_of(raw: bytes) -> list[str]:
    return [line[len(b"event: "):].decode() for line in raw.split(b"\n")
            if line.startswith(b"event: ")]


def test_upstream_killed_mid_run(fake_upstream, make_upstream, midway_factory, router_plugin):
    primary = make_upstream()
    backup = fake_upstream
    # Long, slow streams on the primary: still running when it dies.
    primary.fake.default = lambda rec: Reply(delay=0.1, text_chunks=40)
    proxy = midway_factory(plugins=[router_plugin],
                           config=chain_config(primary.url, backup.url))
    streams = [raw_post(proxy.url + "/v1/messages", {**MSG, "stream": True})
               for _ in range(4)]
    firsts = [resp.read(64) for resp in streams]  # bytes reached each client
    assert all(b"message_start" in first for first in firsts)
    assert len(primary.fake.messages_requests) == 4 and not backup.fake.messages_requests

    primary.stop()  # the primary dies with four streams open

    bodies = [first + resp.read() for first, resp in zip(firsts, streams, strict=True)]
    for resp in streams:
        resp.conn.close()
    for body in bodies:
        names = events_of(body)
        assert names.count("message_start") == 1  # nothing spliced in from the backup
        assert names[-1] == "error"
        assert "message_stop" not in names
        assert b"upstream connection lost" in body
    assert not backup.fake.messages_requests  # no stream was retried elsewhere

    # Requests that start after the crash are served by the fallback, without an error.
    sdk = anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)
    for _ in range(5):
        message = sdk.messages.create(**MSG)
        assert message.content[0].text == "Hello from the fake upstream."
    with sdk.messages.stream(**MSG) as stream:
        assert stream.get_final_message().stop_reason == "end_turn"
    assert len(backup.fake.messages_requests) == 6
    assert all(key_of(r) == "sk-ant-backup" for r in backup.fake.messages_requests)
    wait_idle(proxy)
    rows = {row["upstream"]: row for row in proxy.midway.services["router"].status()}
    assert rows["primary"]["health"] == "down"
    assert rows["backup"]["health"] == "ok"


@pytest.mark.parametrize(("reply", "down"), [
    (Reply(reset_after=3), True),  # the connection broke: the upstream is suspect
    (Reply(error_after=3), False),  # the upstream said why in-band: it is alive
])
def test_a_broken_stream_marks_its_upstream_down(fake_upstream, make_upstream, midway_factory,
                                                 router_plugin, reply, down):
    primary = make_upstream()
    primary.fake.default = lambda rec: reply
    proxy = midway_factory(plugins=[router_plugin],
                           config=chain_config(primary.url, fake_upstream.url))
    resp = raw_post(proxy.url + "/v1/messages", {**MSG, "stream": True})
    body = resp.read()
    resp.conn.close()
    assert events_of(body)[-1] == "error"
    wait_idle(proxy)
    assert (proxy.midway.services["router"].upstreams["primary"].down_until > time.time()) \
        is down
    assert not fake_upstream.messages_requests  # a started stream is never retried


def test_connection_refused_moves_to_fallback_and_marks_down(fake_upstream, make_upstream,
                                                             midway_factory, router_plugin):
    dead = make_upstream()
    url = dead.url
    dead.stop()
    proxy = midway_factory(plugins=[router_plugin], config=chain_config(url, fake_upstream.url))
    sdk = anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)
    sdk.messages.create(**MSG)
    router = proxy.midway.services["router"]
    primary = router.upstreams["primary"]
    assert primary.down_until > time.time()
    # While it is down the primary is skipped outright: one attempt per request.
    before = primary.keys[0].served
    for _ in range(3):
        sdk.messages.create(**MSG)
    assert primary.keys[0].served == before
    assert len(fake_upstream.messages_requests) == 4


@pytest.mark.parametrize("status", [500, 503, 529])
def test_5xx_and_overload_before_first_byte_fall_back(fake_upstream, make_upstream,
                                                      midway_factory, router_plugin, status):
    primary = make_upstream()
    primary.fake.default = lambda rec: Reply(status=status)
    proxy = midway_factory(plugins=[router_plugin],
                           config=chain_config(primary.url, fake_upstream.url))
    sdk = anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)
    with sdk.messages.stream(**MSG) as stream:
        assert stream.get_final_message().content[0].text
    assert len(primary.fake.messages_requests) == 1
    assert len(fake_upstream.messages_requests) == 1


def test_error_answer_without_fallback_is_relayed_unmodified(fake_upstream, midway_factory,
                                                             router_plugin):
    body = b'{"type":"error","error":{"type":"api_error","message":"Internal server error"}}'
    fake_upstream.fake.default = lambda rec: Reply(status=500, body=body)
    config = {"router": {"upstreams": [{"name": "only", "url": fake_upstream.url,
                                        "keys": ["sk-ant-1", "sk-ant-2"]}]}}
    proxy = midway_factory(plugins=[router_plugin], config=config)
    resp = raw_post(proxy.url + "/v1/messages", MSG)
    assert resp.status == 500
    assert resp.read() == body
    resp.conn.close()


def test_concurrent_failover_under_load(fake_upstream, make_upstream, midway_factory,
                                        router_plugin):
    """Requests keep arriving while the primary dies: none fails before its first byte."""
    primary = make_upstream()
    proxy = midway_factory(plugins=[router_plugin],
                           config=chain_config(primary.url, fake_upstream.url))
    sdk = anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)
    failures: list[Exception] = []
    done = threading.Event()
    count = [0]

    def load() -> None:
        while not done.is_set():
            try:
                sdk.messages.create(**MSG)
                count[0] += 1
            except Exception as exc:
                failures.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: count[0] >= 20)
    primary.stop()
    served = count[0]
    wait_for(lambda: count[0] >= served + 20)
    done.set()
    for t in threads:
        t.join(10)
    assert not failures
    assert fake_upstream.messages_requests
