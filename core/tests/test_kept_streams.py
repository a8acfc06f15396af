"""Midway.keep_stream_bodies: post_response sees a streamed answer's bytes as the client got
them — on the raw-chunk path, on the per-event path, decoded, and cut at the limit."""

from __future__ import annotations

import gzip
import urllib.request
from typing import Any

import orjson

from midway import Exchange, SSEEvent, hookimpl
from midway.testing import Reply, wait_for

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
        "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


class Keeper:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: list[tuple[bytes | None, bool]] = []

    @hookimpl
    def startup(self, midway: Any) -> None:
        midway.keep_stream_bodies(self.limit)

    @hookimpl
    def post_response(self, exchange: Exchange) -> None:
        self.seen.append((exchange.stream_body, exchange.stream_truncated))


class Renamer:
    @hookimpl
    def pre_request(self, exchange: Exchange) -> None:
        exchange.observe_stream(self)

    @hookimpl
    def on_chunk(self, event: SSEEvent) -> SSEEvent | None:
        if event.name == "ping":
            return SSEEvent.dropped()
        return None


def _post(url: str, headers: dict[str, str] | None = None) -> bytes:
    request = urllib.request.Request(f"{url}/v1/messages", data=orjson.dumps(BODY),
                                     headers={**HEADERS, **(headers or {})}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
        body: bytes = resp.read()
        if resp.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        return body


def _seen(holder: Any) -> Any:
    """post_response runs after the client has the whole answer: wait for it."""
    wait_for(lambda: holder.seen)
    return holder.seen


def test_kept_stream_is_what_the_client_got(fake_upstream, midway_factory):
    keeper = Keeper(1 << 20)
    running = midway_factory(plugins=[("keeper", keeper)])
    fake_upstream.reply(Reply(chunk_size=7, text_chunks=20))
    got = _post(running.url)
    assert _seen(keeper) == [(got, False)]
    assert got.count(b"event: content_block_delta") > 5  # many chunks, many events


def test_kept_stream_after_on_chunk_changes(fake_upstream, midway_factory):
    keeper = Keeper(1 << 20)
    running = midway_factory(plugins=[("keeper", keeper), ("renamer", Renamer())])
    fake_upstream.reply(Reply(stall=0.3, ping_interval=0.1))
    got = _post(running.url)
    assert b"event: ping" not in got
    assert _seen(keeper) == [(got, False)]


def test_kept_stream_is_cut_at_the_limit(fake_upstream, midway_factory):
    keeper = Keeper(100)
    running = midway_factory(plugins=[("keeper", keeper)])
    fake_upstream.reply(Reply(text_chunks=10))
    got = _post(running.url)
    [(kept, truncated)] = _seen(keeper)
    assert truncated and kept == got[:100]


def test_kept_stream_is_decoded(fake_upstream, midway_factory):
    keeper = Keeper(1 << 20)
    running = midway_factory(plugins=[("keeper", keeper)])
    plain = _post(midway_factory(plugins=[]).url)
    fake_upstream.reply(Reply(headers={"content-encoding": "gzip"},
                              events=[gzip.compress(plain)]))
    _post(running.url, {"accept-encoding": "gzip"})
    [(kept, truncated)] = _seen(keeper)
    assert kept == plain and not truncated


def test_nothing_is_kept_unless_asked(fake_upstream, midway_factory):
    class Looker:
        def __init__(self) -> None:
            self.seen: list[Any] = []

        @hookimpl
        def post_response(self, exchange: Exchange) -> None:
            self.seen.append(exchange.stream_body)

    looker = Looker()
    running = midway_factory(plugins=[("looker", looker)])
    _post(running.url)
    assert _seen(looker) == [None]
