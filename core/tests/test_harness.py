"""The relay driven in-process (midway.testing.Harness): every hook, one answer interface."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from midway import Exchange, SSEEvent, Upstream, hookimpl
from midway.exchange import PreparedRequest
from midway.testing import Harness, Reply

STREAM = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
          "messages": [{"role": "user", "content": "Hello"}]}


class Recorder:
    """Implements every request hook; observes streams only when the request says so."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.events: list[str | None] = []

    @hookimpl
    def pre_request(self, exchange: Exchange) -> None:
        self.calls.append("pre_request")
        if "x-observe" in exchange.request.headers:
            exchange.observe_stream(self)

    @hookimpl
    def choose_upstream(self, exchange: Exchange) -> None:
        self.calls.append("choose_upstream")

    @hookimpl
    def upstream_request(self, exchange: Exchange) -> None:
        self.calls.append("upstream_request")

    @hookimpl
    def upstream_response(self, exchange: Exchange) -> None:
        self.calls.append("upstream_response")

    @hookimpl
    def on_chunk(self, event: SSEEvent) -> SSEEvent | None:
        self.events.append(event.name)
        return SSEEvent.dropped() if event.name == "ping" else None

    @hookimpl
    async def post_response(self, exchange: Exchange) -> None:
        await asyncio.sleep(0)
        self.calls.append("post_response")


def test_an_exchange_runs_through_every_hook_without_sockets() -> None:
    recorder = Recorder()

    async def main() -> None:
        async with Harness(plugins=[("recorder", recorder)]) as h:
            h.upstream.reply(Reply(chunk_size=7, usage={"input_tokens": 11,
                                                        "output_tokens": 5}))
            result = await h.request(STREAM, headers={"x-observe": "1"})
            assert result.status == 200
            assert result.headers["content-type"].startswith("text/event-stream")
            assert b"event: ping" not in result.body  # replaced by on_chunk
            assert result.body.rstrip().endswith(b'data: {"type":"message_stop"}')
            exchange = result.exchange
            assert (exchange.usage.input_tokens, exchange.usage.output_tokens) == (11, 5)
            assert exchange.streaming and exchange.stop_reason == "end_turn"
            [sent] = h.upstream.messages_requests
            assert sent.json["messages"] == STREAM["messages"]
            assert sent.headers["accept-encoding"] == "identity"  # observed: plain bytes

    asyncio.run(main())
    assert recorder.calls == ["pre_request", "choose_upstream", "upstream_request",
                              "upstream_response", "post_response"]
    assert recorder.events[0] == "message_start" and recorder.events[-1] == "message_stop"


def test_on_chunk_fires_only_for_exchanges_that_opted_in() -> None:
    recorder = Recorder()

    async def main() -> None:
        async with Harness(plugins=[("recorder", recorder)]) as h:
            h.upstream.reply(Reply(chunk_size=1))
            plain = await h.request(STREAM)
            assert recorder.events == [] and plain.exchange.stream_observers == []
            assert b"event: ping" in plain.body  # relayed as it came
            assert plain.exchange.usage.output_tokens > 0  # observed all the same
            h.upstream.reply(Reply(chunk_size=1))  # split anywhere: every event still whole
            observed = await h.request(STREAM, headers={"x-observe": "1"})
            assert b"event: ping" not in observed.body
            assert recorder.events.count("content_block_delta") == 3

    asyncio.run(main())


class Vendor:
    """A toy vendor: its JSON says ``reply`` where Anthropic's says ``message``."""

    name = "toy"

    def prepare(self, exchange: Exchange, upstream: Upstream) -> PreparedRequest:
        from multidict import CIMultiDict

        return PreparedRequest(method="POST", url=upstream.url + "/v1/messages",
                               headers=CIMultiDict({"x-api-key": "vendor"}),
                               body=exchange.request.body)

    def translate_error(self, status: int, headers: Mapping[str, str], body: bytes) -> bytes:
        return orjson.dumps({"type": "error", "error": {"type": "vendor_error",
                                                        "message": f"vendor said {status}"}})

    def translate_json(self, exchange: Exchange, body: bytes) -> bytes:
        message = orjson.loads(body)
        return orjson.dumps({**message, "model": "translated"})

    def stream_translator(self, exchange: Exchange) -> Any:
        class Upper:
            def feed(self, data: bytes) -> bytes:
                return data.replace(b"Hello", b"HELLO")

            def close(self) -> bytes:
                return b""
        return Upper()


class Chooser:
    @hookimpl
    def choose_upstream(self) -> Upstream:
        return Upstream(url="http://vendor.invalid", name="toy", adapter=Vendor())


def test_a_vendor_adapter_transforms_the_answer() -> None:
    async def main() -> None:
        async with Harness(plugins=[("chooser", Chooser())]) as h:
            result = await h.request()
            assert result.json()["model"] == "translated"
            assert result.exchange.response_model == "translated"
            h.upstream.reply(Reply(text_chunks=1))
            streamed = await h.request(STREAM)
            assert b"HELLO from the fake upstream" in streamed.body
            h.upstream.reply(Reply(status=429))
            refused = await h.request()
            assert refused.status == 429
            assert refused.json()["error"] == {"type": "vendor_error",
                                               "message": "vendor said 429"}
            assert refused.exchange.error_type == "vendor_error"

    asyncio.run(main())


def test_post_response_runs_in_order_across_plain_and_async_implementations() -> None:
    order: list[str] = []

    class Plain:
        def __init__(self, name: str) -> None:
            self.name = name

        @hookimpl
        def post_response(self) -> None:
            order.append(self.name)

    class Later:
        @hookimpl
        async def post_response(self) -> None:
            await asyncio.sleep(0)
            order.append("async")

    async def main() -> None:
        # pluggy calls the plugin registered last first
        async with Harness(plugins=[("c", Plain("c")), ("b", Later()), ("a", Plain("a"))]) as h:
            await h.request()

    asyncio.run(main())
    assert order == ["a", "async", "c"]


def test_the_documented_in_process_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "writing-plugins.md").read_text()
    plugin = re.search(r"```python\n(# team_tag.py.*?)```", text, flags=re.S)
    example = re.search(r"```python\n(import asyncio\n\nfrom midway.testing.*?)```", text,
                        flags=re.S)
    assert plugin is not None and example is not None
    (tmp_path / "team_tag.py").write_text(plugin.group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "team_tag", raising=False)
    namespace: dict[str, Any] = {}
    exec(example.group(1), namespace)
    namespace["test_team_tag_in_process"]()
