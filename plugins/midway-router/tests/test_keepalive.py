"""Keep-alive pings on translated streams: an OpenAI-compatible or Bedrock upstream that goes
silent mid-answer (thinking) sends no pings of its own; midway sends Anthropic's ``event:
ping`` in the gap, so Claude Code's 300 s watchdog never fires. The fakes stall until the
client has seen the pings (no sleeps): the test releases them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from fake_bedrock import BedrockReply, FakeBedrockServer
from fake_openai import FakeOpenAIServer, OpenAIReply

AWS_KEY, AWS_SECRET = "AKIAKEEPALIVE00001", "keepalive-secret"
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
        "messages": [{"role": "user", "content": "think hard"}]}
PINGS = 3


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bedrock_server() -> Iterator[FakeBedrockServer]:
    server = FakeBedrockServer(AWS_KEY, AWS_SECRET)
    server.start()
    yield server
    server.stop()


def upstream(kind: str, url: str, interval: float | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": kind, "kind": kind, "url": url}
    if kind == "openai":
        spec["keys"] = ["sk-openai"]
    else:
        spec.update(region="us-east-1", credentials=[{"access_key_id": AWS_KEY,
                                                      "secret_access_key": AWS_SECRET}])
    if interval is not None:
        spec["ping_interval"] = interval
    return spec


def read_events(url: str, resume: threading.Event | None) -> list[tuple[str, Any]]:
    """The stream's events in order; ``resume`` is set once PINGS pings have arrived."""
    events: list[tuple[str, Any]] = []
    name = None
    with httpx.stream("POST", f"{url}/v1/messages", json=BODY, timeout=30,
                      headers={"x-api-key": "client", "anthropic-version": "2023-06-01"}
                      ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((str(name), orjson.loads(line[6:])))
                if resume is not None and \
                        sum(1 for n, _ in events if n == "ping") == PINGS:
                    resume.set()
    return events


@pytest.mark.parametrize("kind", ["openai", "bedrock"])
def test_a_silent_vendor_gets_pings_between_events(kind, openai_server, bedrock_server,
                                                    midway_factory, router_plugin) -> None:
    server = openai_server if kind == "openai" else bedrock_server
    reply = OpenAIReply(content="Thought it through.", stall_after=2) if kind == "openai" \
        else BedrockReply(stall_after=3)
    server.reply(reply)
    proxy = midway_factory(plugins=[router_plugin], config={"router": {
        "upstreams": [upstream(kind, server.url, 0.02)]}})

    events = read_events(proxy.url, reply.resume)

    names = [n for n, _ in events]
    assert names.count("ping") >= PINGS
    assert names[0] in ("message_start", "ping") and names[-1] == "message_stop"
    first_ping = names.index("ping")
    # the pings fill the gap: events came before it and the answer came after it
    assert "message_start" in names[:first_ping]
    assert "content_block_delta" in names[first_ping:]
    assert all(data == {"type": "ping"} for n, data in events if n == "ping")
    text = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert text == ("Thought it through." if kind == "openai" else "Hello from the fake Bedrock.")


def test_the_sdk_reads_a_pinged_stream_whole(openai_server, midway_factory,
                                             router_plugin) -> None:
    reply = OpenAIReply(content="Still here.", stall_after=1)
    openai_server.reply(reply)
    proxy = midway_factory(plugins=[router_plugin], config={"router": {
        "upstreams": [upstream("openai", openai_server.url, 0.02)]}})
    seen: list[str] = []
    client = anthropic.Anthropic(base_url=proxy.url, api_key="client", max_retries=0)
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        for event in stream:
            seen.append(event.type)
            if event.type == "message_start":
                reply.resume.set()  # the SDK hides pings: the start is the sign it is talking
        message = stream.get_final_message()
    assert message.content[0].text == "Still here."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"


def test_a_vendor_that_does_not_pause_gets_no_pings(openai_server, midway_factory,
                                                    router_plugin) -> None:
    proxy = midway_factory(plugins=[router_plugin], config={"router": {
        "upstreams": [upstream("openai", openai_server.url, None)]}})  # default: 10 s
    names = [n for n, _ in read_events(proxy.url, None)]
    assert "ping" not in names and names[-1] == "message_stop"


@pytest.mark.parametrize("bad", [-1, "10s", True])
def test_a_bad_interval_is_one_line(bad, router_plugin) -> None:
    from midway.config import ConfigError
    from midway_router.settings import parse

    with pytest.raises(ConfigError, match="ping_interval must be a non-negative number"):
        parse({"upstreams": [upstream("openai", "http://127.0.0.1:1", bad)]})


def test_start_up_announces_the_ping_interval(tmp_path) -> None:
    from midway.config import Settings
    from midway.context import Midway
    from midway.plugins import PluginHost
    from midway_router import describe

    def line(upstreams: list[dict[str, Any]]) -> str:
        settings = Settings(data_dir=tmp_path, plugins=[])
        settings.tables = {"router": {"upstreams": upstreams}}
        return str(describe(Midway(settings, PluginHost())))

    assert line([upstream("openai", "http://127.0.0.1:1", None)]).endswith(
        "; pings translated streams after 10 s of vendor silence")
    assert "pings" not in line([upstream("openai", "http://127.0.0.1:1", 0)])
    assert "pings" not in line([{"name": "a", "url": "http://127.0.0.1:1"}])


def test_a_client_leaving_during_the_silence_leaves_nothing_behind(
        openai_server, midway_factory, router_plugin) -> None:
    from midway.testing import wait_for

    reply = OpenAIReply(content="never read", stall_after=1)
    openai_server.reply(reply)
    proxy = midway_factory(plugins=[router_plugin], config={"router": {
        "upstreams": [upstream("openai", openai_server.url, 0.02)]}})
    before = httpx.get(f"{proxy.url}/healthz").json()["tasks"]
    pings = 0
    with httpx.stream("POST", f"{proxy.url}/v1/messages", json=BODY, timeout=30,
                      headers={"x-api-key": "client"}) as response:
        for line in response.iter_lines():
            pings += line == "event: ping"
            if pings == 2:
                break  # the client hangs up while the vendor is still silent
    try:
        wait_for(lambda: proxy.proxy.open_streams == 0, timeout=10)
        # the wait for the vendor's next chunk was cancelled with the request
        wait_for(lambda: httpx.get(f"{proxy.url}/healthz").json()["tasks"] <= before,
                 timeout=10)
    finally:
        reply.resume.set()
