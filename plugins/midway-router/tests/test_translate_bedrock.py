"""Claude on Bedrock behind midway: SigV4 signing, the body Bedrock expects, event-stream
framing decoded into Anthropic SSE, errors translated. Driven with the official SDK."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer
from fake_bedrock import (
    BedrockReply,
    FakeBedrockServer,
    chunk_message,
    exception_message,
    message_of,
    stream_events,
)
from yarl import URL

from midway import Upstream, hookimpl
from midway.sse import SSEParser
from midway.testing import RunningMidway, make_exchange
from midway_router.bedrock_adapter import BedrockAdapter, BedrockStreamTranslator, bedrock_model_id
from midway_router.eventstream import EventStreamDecoder, EventStreamError

KEY_ID = "AKIAFAKEKEY000000001"
SECRET = "fake/secret+access/key0000000000000000000"
TOKEN = "FwoGZXIvYXdzEFAKESESSIONTOKEN"
THINKING = {"type": "thinking", "thinking": "Let me think.",
            "signature": "EqQBCkYIBxgCKkD+/sig==with/odd+bytes"}


class Route:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    @hookimpl
    def choose_upstream(self) -> Upstream:
        return self.upstream


@pytest.fixture(params=[None, TOKEN], ids=["keys", "session-token"])
def bedrock(request: pytest.FixtureRequest) -> Iterator[FakeBedrockServer]:
    server = FakeBedrockServer(KEY_ID, SECRET, request.param)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(midway_factory: Callable[..., RunningMidway], bedrock: FakeBedrockServer
           ) -> anthropic.Anthropic:
    adapter = BedrockAdapter("us-east-1", KEY_ID, SECRET, bedrock.fake.credentials.token,
                             model_map={"claude-haiku-*": "us.anthropic.claude-haiku-4-5-v1:0"})
    upstream = Upstream(url=bedrock.url, name="bedrock", adapter=adapter, passthrough_auth=False)
    proxy = midway_factory(plugins=[("bedrock_route", Route(upstream))])
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-client", max_retries=0)


def ask(client: anthropic.Anthropic, stream: bool, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"model": "claude-opus-4-8", "max_tokens": 512,
                              "messages": [{"role": "user", "content": "Hello"}], **kwargs}
    if not stream:
        return client.messages.create(**params)
    with client.messages.stream(**params) as events:
        return events.get_final_message()


@pytest.mark.parametrize("stream", [False, True])
def test_text_and_tools(bedrock: FakeBedrockServer, client: anthropic.Anthropic,
                        stream: bool) -> None:
    reply = BedrockReply(content=[THINKING, {"type": "text", "text": "Grüße, checking 🌦"},
                                  {"type": "tool_use", "name": "get_weather",
                                   "input": {"city": "Zürich"}}],
                         stop_reason="tool_use", usage={"input_tokens": 31, "output_tokens": 9},
                         chunk_size=3)
    bedrock.reply(reply)
    message = ask(client, stream, extra_headers={
        "anthropic-beta": "interleaved-thinking-2025-05-14,context-1m-2025-08-07"})
    want = message_of(reply, "claude-opus-4-8")
    assert [b.model_dump(exclude_none=True) for b in message.content] == want["content"]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (31, 9)
    sent = bedrock.requests[0]
    assert sent.signature_ok
    action = "invoke-with-response-stream" if stream else "invoke"
    assert sent.path == f"/model/anthropic.claude-opus-4-8-v1:0/{action}"
    assert sent.body["anthropic_version"] == "bedrock-2023-05-31"
    assert sent.body["anthropic_beta"] == ["interleaved-thinking-2025-05-14",
                                           "context-1m-2025-08-07"]
    assert "model" not in sent.body and "stream" not in sent.body
    assert sent.body["messages"] == [{"role": "user", "content": "Hello"}]
    assert "sk-ant-client" not in str(dict(sent.headers))
    assert "x-api-key" not in sent.headers


def test_model_map_and_thinking_passthrough(bedrock: FakeBedrockServer,
                                            client: anthropic.Anthropic) -> None:
    history = [{"role": "user", "content": "Hi"},
               {"role": "assistant", "content": [THINKING, {"type": "text", "text": "Hey"}]},
               {"role": "user", "content": "More"}]
    ask(client, True, model="claude-haiku-4-5", messages=history)
    sent = bedrock.requests[0]
    assert sent.path == "/model/us.anthropic.claude-haiku-4-5-v1:0/invoke-with-response-stream"
    # Same vendor, same model family: thinking signatures are passed on untouched.
    assert sent.body["messages"][1]["content"][0] == THINKING
    assert "anthropic_beta" not in sent.body


@pytest.mark.parametrize(("status", "aws_type", "sdk_error", "anthropic_type"), [
    (429, "ThrottlingException", anthropic.RateLimitError, "rate_limit_error"),
    (400, "ValidationException", anthropic.BadRequestError, "invalid_request_error"),
    (403, "AccessDeniedException", anthropic.PermissionDeniedError, "permission_error"),
    (503, "ServiceUnavailableException", anthropic.InternalServerError, "overloaded_error"),
])
def test_http_errors(bedrock: FakeBedrockServer, client: anthropic.Anthropic, status: int,
                     aws_type: str, sdk_error: type[Exception], anthropic_type: str) -> None:
    bedrock.reply(BedrockReply(status=status, error_type=aws_type, error_message="nope"))
    with pytest.raises(sdk_error) as raised:
        ask(client, False)
    assert raised.value.body == {"type": "error",  # type: ignore[attr-defined]
                                 "error": {"type": anthropic_type, "message": "nope"}}


def test_bad_signature_is_an_authentication_error(
        midway_factory: Callable[..., RunningMidway], bedrock: FakeBedrockServer) -> None:
    adapter = BedrockAdapter("us-east-1", KEY_ID, "not-the-secret",
                             bedrock.fake.credentials.token)
    upstream = Upstream(url=bedrock.url, name="bedrock", adapter=adapter, passthrough_auth=False)
    proxy = midway_factory(plugins=[("bedrock_route", Route(upstream))])
    client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        ask(client, False)
    assert raised.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert bedrock.requests[0].signature_ok is False


def test_stream_exception_becomes_an_error_event(bedrock: FakeBedrockServer,
                                                 client: anthropic.Anthropic) -> None:
    bedrock.reply(BedrockReply(exception_after=3))
    with pytest.raises(anthropic.APIStatusError, match="Too many requests") as raised:
        ask(client, True)
    assert raised.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_truncated_stream_ends_with_an_error_event(bedrock: FakeBedrockServer,
                                                   client: anthropic.Anthropic) -> None:
    bedrock.reply(BedrockReply(truncate_after=4))
    with pytest.raises(anthropic.APIStatusError, match="ended the stream"):
        ask(client, True)


# -- framing, without the network --


def frames() -> tuple[bytes, list[dict[str, Any]]]:
    message = message_of(BedrockReply(content=[
        THINKING, {"type": "text", "text": "ça — 🌍"},
        {"type": "tool_use", "name": "t", "input": {"k": "v"}}]), "claude-x")
    events = stream_events(message)
    return b"".join(chunk_message(e) for e in events), events


def test_fake_framing_is_what_botocore_reads() -> None:
    data, events = frames()
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    parsed = list(buffer)
    assert len(parsed) == len(events)
    assert parsed[0].headers[":event-type"] == "chunk"
    ours = EventStreamDecoder().feed(data)
    assert [(m.headers, m.payload) for m in ours] == [(p.headers, p.payload) for p in parsed]


def test_decoder_survives_every_split() -> None:
    data, events = frames()
    translator = BedrockStreamTranslator()
    out = b"".join(translator.feed(data[i:i + 1]) for i in range(len(data))) + translator.close()
    got = [(e.name, orjson.loads(e.data)) for e in SSEParser().feed(out)]
    assert got == [(e["type"], e) for e in events]
    rng = random.Random(5)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), 10))
        translator = BedrockStreamTranslator()
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert b"".join(translator.feed(p) for p in pieces) + translator.close() == out


def test_crc_errors_are_detected() -> None:
    data, _ = frames()
    for position in (5, 20, len(data) // 3):  # prelude, headers, payload of some message
        corrupt = bytearray(data)
        corrupt[position] ^= 0x01
        with pytest.raises(EventStreamError):
            EventStreamDecoder().feed(bytes(corrupt))
        out = BedrockStreamTranslator().feed(bytes(corrupt))
        last = SSEParser().feed(out)[-1]
        assert last.name == "error" and "corrupt" in last.data


def test_exception_frames_map_to_anthropic_error_types() -> None:
    translator = BedrockStreamTranslator()
    out = translator.feed(exception_message("serviceUnavailableException", "busy"))
    event = SSEParser().feed(out)[0]
    assert event.name == "error"
    assert orjson.loads(event.data) == {"type": "error", "error": {
        "type": "overloaded_error", "message": "busy"}}
    assert translator.close() == b""


def test_model_ids() -> None:
    table = {"claude-opus-4-8": "global.anthropic.claude-opus-4-8-v1", "claude-haiku-*": "h"}
    assert bedrock_model_id("claude-opus-4-8", table) == "global.anthropic.claude-opus-4-8-v1"
    assert bedrock_model_id("claude-haiku-4-5", table) == "h"
    assert bedrock_model_id("us.anthropic.claude-sonnet-4-v1:0", {}) == \
        "us.anthropic.claude-sonnet-4-v1:0"
    assert bedrock_model_id("claude-sonnet-4-20250514", {}) == \
        "anthropic.claude-sonnet-4-20250514-v1:0"


def test_betas_can_be_restricted_and_credentials_never_show() -> None:
    adapter = BedrockAdapter("eu-west-1", KEY_ID, SECRET, betas={"context-1m-2025-08-07"})
    exchange = make_exchange(
        body={"model": "claude-sonnet-4-6", "max_tokens": 5, "stream": True,
              "messages": [{"role": "user", "content": "x"}]},
        headers={"anthropic-beta": "claude-code-20250219, context-1m-2025-08-07"})
    prepared = adapter.prepare(exchange, Upstream(url="https://bedrock-runtime.eu-west-1"
                                                      ".amazonaws.com/"))
    assert prepared.url == "https://bedrock-runtime.eu-west-1.amazonaws.com/model/" \
        "anthropic.claude-sonnet-4-6-v1:0/invoke-with-response-stream"
    assert orjson.loads(prepared.body)["anthropic_beta"] == ["context-1m-2025-08-07"]
    assert "/eu-west-1/bedrock/aws4_request" in prepared.headers["authorization"]
    assert SECRET not in repr(adapter) and SECRET not in str(dict(prepared.headers))


def test_a_bedrock_format_client_passes_through_re_signed(
        midway_factory: Callable[..., RunningMidway], bedrock: FakeBedrockServer) -> None:
    """A Bedrock-format client (Claude Code with CLAUDE_CODE_USE_BEDROCK=1) to a Bedrock
    upstream: its body and model id go on unmodified, signed with midway's credentials (its
    own signature is dropped), and its stream comes back with each event's bytes unchanged."""
    adapter = BedrockAdapter("us-east-1", KEY_ID, SECRET, bedrock.fake.credentials.token)
    upstream = Upstream(url=bedrock.url, name="bedrock", adapter=adapter, passthrough_auth=False)
    proxy = midway_factory(plugins=[("bedrock_route", Route(upstream))])
    model_id = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    body = b'{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,' \
           b' "anthropic_beta": ["interleaved-thinking-2025-05-14"],' \
           b' "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}'
    for action in ("invoke", "invoke-with-response-stream"):
        url = f"{proxy.url}/model/{model_id.replace(':', '%3A')}/{action}"
        signed = AWSRequest(method="POST", url=url, data=body,
                            headers={"x-api-key": "sk-ant-client"})
        SigV4Auth(Credentials("AKIDTHECLIENT0000000", "client-secret"), "bedrock",
                  "us-east-1").add_auth(signed)

        async def go(url: str = url, headers: dict[str, str] = dict(signed.headers)
                     ) -> tuple[int, str, bytes]:
            async with aiohttp.ClientSession() as session, session.post(
                    URL(url, encoded=True), data=body, headers=headers) as resp:
                return resp.status, resp.headers["content-type"], await resp.read()

        status, content_type, answer = asyncio.run(go())
        assert status == 200, answer
        seen = bedrock.fake.requests[-1]
        assert seen.signature_ok and seen.raw == body  # re-signed by midway, body unmodified
        assert seen.path == f"/model/{model_id}/{action}"
        assert "AKIDTHECLIENT" not in repr(dict(seen.headers))
        if action == "invoke":
            assert orjson.loads(answer)["content"][0]["type"] == "text"
            continue
        assert content_type == "application/vnd.amazon.eventstream"
        buffer = EventStreamBuffer()
        buffer.add_data(answer)
        chunks = [orjson.loads(m.payload)["bytes"] for m in buffer]
        assert answer == bedrock.fake.sent_streams[-1]  # byte for byte, padding included
        assert orjson.loads(base64.b64decode(chunks[-1]))["type"] == "message_stop"


def test_count_tokens_reaches_bedrock_count_tokens(
        midway_factory: Callable[..., RunningMidway], bedrock: FakeBedrockServer) -> None:
    adapter = BedrockAdapter("us-east-1", KEY_ID, SECRET, bedrock.fake.credentials.token)
    upstream = Upstream(url=bedrock.url, name="bedrock", adapter=adapter, passthrough_auth=False)
    proxy = midway_factory(plugins=[("bedrock_route", Route(upstream))])
    # an Anthropic-format client: translated into CountTokens and back
    sdk = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-client", max_retries=0)
    counted = sdk.messages.count_tokens(model="claude-sonnet-4-5-20250929",
                                        messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens > 0
    seen = bedrock.fake.requests[-1]
    assert seen.signature_ok and seen.path == \
        "/model/anthropic.claude-sonnet-4-5-20250929-v1:0/count-tokens"
    # a Bedrock-format client: its CountTokens body goes on unmodified
    inner = base64.b64encode(b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":9,'
                             b'"messages":[{"role":"user","content":"hi"}]}').decode()
    body = orjson.dumps({"input": {"invokeModel": {"body": inner}}})

    async def go() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session, session.post(
                f"{proxy.url}/model/us.anthropic.claude-haiku-4-5-20251001-v1:0/count-tokens",
                data=body) as resp:
            return resp.status, await resp.read()

    status, answer = asyncio.run(go())
    assert status == 200, answer
    assert orjson.loads(answer)["inputTokens"] > 0
    assert bedrock.fake.requests[-1].raw == body and bedrock.fake.requests[-1].signature_ok


def test_a_bedrock_exception_reaches_a_bedrock_client_as_it_came(
        midway_factory: Callable[..., RunningMidway], bedrock: FakeBedrockServer) -> None:
    adapter = BedrockAdapter("us-east-1", KEY_ID, SECRET, bedrock.fake.credentials.token)
    upstream = Upstream(url=bedrock.url, name="bedrock", adapter=adapter, passthrough_auth=False)
    proxy = midway_factory(plugins=[("bedrock_route", Route(upstream))])
    bedrock.reply(BedrockReply(exception_after=2))
    body = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,' \
           b'"messages":[{"role":"user","content":"hi"}]}'

    async def go() -> bytes:
        async with aiohttp.ClientSession() as session, session.post(
                f"{proxy.url}/model/anthropic.claude-haiku-4-5-20251001-v1:0/"
                "invoke-with-response-stream", data=body) as resp:
            return await resp.read()

    answer = asyncio.run(go())
    assert answer == bedrock.fake.sent_streams[-1]
    buffer = EventStreamBuffer()
    buffer.add_data(answer)
    last = list(buffer)[-1]
    assert last.headers[":message-type"] == "exception"
