"""Bedrock InvokeModel clients (Claude Code with CLAUDE_CODE_USE_BEDROCK=1, the SDK's
AnthropicBedrock) through midway with client keys, billing and audit, to an Anthropic upstream:
the request arrives as the Messages request it stands for, the stream goes back as a real
event stream (read with botocore's decoder), the client's AWS signature never leaves."""

from __future__ import annotations

import asyncio
import base64
from decimal import Decimal
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer
from multidict import CIMultiDict
from yarl import URL

import midway_audit
import midway_billing
import midway_cache
from midway.fake_upstream import Reply
from midway.testing import FakeUpstream, RunningMidway, wait_for

ALICE = "mw-alice-bedrock-test-key-00000000000"
HAIKU_ONLY = "mw-haiku-bedrock-test-key-0000000000"
UPSTREAM_KEY = "sk-ant-upstream-bedrock"
SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
HAIKU = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 20,
        "anthropic_beta": ["interleaved-thinking-2025-05-14"],
        "messages": [{"role": "user", "content": "What is 2 + 2?"}]}


@pytest.fixture
def gateway(midway_factory: Any, monkeypatch: pytest.MonkeyPatch) -> RunningMidway:
    monkeypatch.setenv("MW_BEDROCK_UPSTREAM_KEY", UPSTREAM_KEY)
    return midway_factory(  # type: ignore[no-any-return]
        plugins=[("billing", midway_billing), ("audit", midway_audit)],
        upstream_api_key="env:MW_BEDROCK_UPSTREAM_KEY",
        client_keys=[{"key": ALICE, "name": "alice"},
                     {"key": HAIKU_ONLY, "name": "haiku", "models": ["claude-haiku-*"]}])


def audit_record(running: RunningMidway, request_id: str) -> dict[str, Any]:
    audit = running.midway.services["audit"]
    wait_for(lambda: running.call(audit.get(request_id)) is not None)
    return running.call(audit.get(request_id))  # type: ignore[no-any-return]


def bedrock(running: RunningMidway, key: str = ALICE) -> anthropic.AnthropicBedrock:
    # CLAUDE_CODE_SKIP_BEDROCK_AUTH=1 / AWS_BEARER_TOKEN_BEDROCK: the midway key as the bearer
    return anthropic.AnthropicBedrock(base_url=running.url, api_key=key,
                                      aws_region="us-east-1", max_retries=0)


def test_the_bedrock_sdk_is_served_billed_and_audited(gateway: RunningMidway,
                                                      fake_upstream: FakeUpstream) -> None:
    raw = bedrock(gateway).messages.with_raw_response.create(
        model=SONNET, max_tokens=20, messages=[{"role": "user", "content": "What is 2 + 2?"}],
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})
    assert raw.parse().content[0].type == "text"
    seen = fake_upstream.messages_requests[-1]
    body = orjson.loads(seen.body)
    assert body["model"] == "claude-sonnet-4-5-20250929"
    assert not {"anthropic_version", "anthropic_beta"} & set(body)
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert seen.headers["x-api-key"] == UPSTREAM_KEY and ALICE not in repr(dict(seen.headers))
    record = audit_record(gateway, raw.headers["x-midway-request-id"])
    assert record["annotations"]["client_format"] == "bedrock"
    assert record["principal_name"] == "alice" and Decimal(record["cost_usd"]) > 0


def test_the_bedrock_sdk_streams_an_event_stream(gateway: RunningMidway,
                                                 fake_upstream: FakeUpstream) -> None:
    with bedrock(gateway).messages.stream(
            model=HAIKU, max_tokens=20, messages=[{"role": "user", "content": "hi"}]) as stream:
        assert stream.response.headers["content-type"] == "application/vnd.amazon.eventstream"
        text = stream.get_final_text()
        message = stream.get_final_message()
        request_id = stream.response.headers["x-midway-request-id"]
    assert text and message.usage.output_tokens > 0
    assert orjson.loads(fake_upstream.messages_requests[-1].body)["stream"] is True
    record = audit_record(gateway, request_id)
    assert record["streaming"] and record["usage"]["output_tokens"] == \
        message.usage.output_tokens
    assert Decimal(record["cost_usd"]) > 0


def call(running: RunningMidway, path: str, body: Any, headers: dict[str, str] | None = None,
         method: str = "POST") -> tuple[int, CIMultiDict[str], bytes]:
    async def go() -> tuple[int, CIMultiDict[str], bytes]:
        async with aiohttp.ClientSession() as session, session.request(
                method, URL(running.url + path, encoded=True),
                data=orjson.dumps(body) if body is not None else None,
                headers=headers or {"authorization": f"Bearer {ALICE}"}) as resp:
            return resp.status, CIMultiDict(resp.headers), await resp.read()
    return asyncio.run(go())


def frames(data: bytes) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(m.headers, orjson.loads(m.payload)) for m in buffer]


def test_a_mid_stream_error_is_an_exception_message(gateway: RunningMidway,
                                                    fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply(Reply(error_after=2))
    status, headers, data = call(gateway, f"/model/{HAIKU}/invoke-with-response-stream", BODY)
    assert status == 200 and headers["content-type"] == "application/vnd.amazon.eventstream"
    messages = frames(data)
    events = [orjson.loads(base64.b64decode(p["bytes"]))["type"]
              for h, p in messages if h[":message-type"] == "event"]
    assert events[0] == "message_start"
    last_headers, last_payload = messages[-1]
    assert last_headers[":message-type"] == "exception"
    assert last_headers[":exception-type"] == "serviceUnavailableException"
    assert last_payload == {"message": "Overloaded"}


def test_count_tokens_in_bedrock_shape(gateway: RunningMidway,
                                       fake_upstream: FakeUpstream) -> None:
    inner = base64.b64encode(orjson.dumps(BODY)).decode()
    status, _, data = call(gateway, f"/model/{SONNET.replace(':', '%3A')}/count-tokens",
                           {"input": {"invokeModel": {"body": inner}}})
    assert status == 200, data
    assert set(orjson.loads(data)) == {"inputTokens"} and orjson.loads(data)["inputTokens"] > 0
    sent = fake_upstream.requests[-1]
    assert sent.path == "/v1/messages/count_tokens"
    assert orjson.loads(sent.body)["model"] == "claude-sonnet-4-5-20250929"


def test_the_clients_aws_signature_never_leaves(gateway: RunningMidway,
                                                fake_upstream: FakeUpstream) -> None:
    url = f"{gateway.url}/model/{HAIKU}/invoke"
    signed = AWSRequest(method="POST", url=url, data=orjson.dumps(BODY),
                        headers={"x-api-key": ALICE})
    SigV4Auth(Credentials("AKIDCLIENT", "client-secret", "client-session"), "bedrock",
              "us-east-1").add_auth(signed)
    status, _, data = call(gateway, f"/model/{HAIKU}/invoke", BODY, dict(signed.headers))
    assert status == 200, data
    seen = fake_upstream.messages_requests[-1].headers
    assert not [n for n in seen if n.lower().startswith("x-amz-")]
    assert "AKIDCLIENT" not in repr(dict(seen)) and "authorization" not in seen


def test_a_haiku_key_may_not_reach_sonnet_through_bedrock(gateway: RunningMidway,
                                                         fake_upstream: FakeUpstream) -> None:
    before = len(fake_upstream.requests)
    haiku = {"authorization": f"Bearer {HAIKU_ONLY}"}
    for path in (f"/model/{SONNET}/invoke", f"/model/{SONNET}/invoke-with-response-stream",
                 f"/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2F{SONNET}"
                 "/invoke"):
        status, _, data = call(gateway, path, BODY, haiku)
        assert status == 403 and b"claude-sonnet-4-5" in data
    # the body naming another model than the path is refused, not believed
    status, _, data = call(gateway, f"/model/{HAIKU}/invoke", {**BODY, "model": SONNET}, haiku)
    assert status == 400
    for path in (f"/model/{HAIKU}/../{SONNET}/invoke", f"/model/./{SONNET}/invoke",
                 f"/model//{SONNET}/invoke", f"/model/{SONNET}/Invoke",
                 f"/model/{SONNET}/invoke/", f"/model/{SONNET}%2Finvoke",
                 f"/model/%2E%2E/{SONNET}/invoke"):
        status, _, data = call(gateway, path, BODY, haiku)
        assert status in (400, 404), (path, data)
    assert len(fake_upstream.requests) == before


def test_a_cache_hit_is_replayed_as_an_event_stream(midway_factory: Any,
                                                     fake_upstream: FakeUpstream) -> None:
    running = midway_factory(plugins=[("cache", midway_cache)],
                             config={"cache": {"rules": [{"model": "*"}]}})  # opted in
    client = anthropic.AnthropicBedrock(base_url=running.url, api_key="sk-ant-own",
                                        aws_region="us-east-1", max_retries=0)
    texts, outcomes = [], []
    for _ in range(2):
        with client.messages.stream(model=HAIKU, max_tokens=20,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            texts.append(stream.get_final_text())
            outcomes.append(stream.response.headers.get("x-midway-cache"))
    assert outcomes == ["miss", "hit"] and texts[0] == texts[1]
    assert len(fake_upstream.messages_requests) == 1


def test_inference_profiles_are_refused_cleanly(gateway: RunningMidway) -> None:
    for path in ("/inference-profiles?type=SYSTEM_DEFINED", f"/inference-profiles/{SONNET}"):
        status, _, data = call(gateway, path, None, method="GET")
        assert status == 404 and orjson.loads(data)["type"] == "error"


def test_a_signature_alone_is_told_how_to_authenticate(gateway: RunningMidway,
                                                       fake_upstream: FakeUpstream) -> None:
    url = f"{gateway.url}/model/{HAIKU}/invoke"
    signed = AWSRequest(method="POST", url=url, data=orjson.dumps(BODY))
    SigV4Auth(Credentials("AKIDCLIENT", "client-secret"), "bedrock", "us-east-1").add_auth(signed)
    before = len(fake_upstream.requests)
    status, _, data = call(gateway, f"/model/{HAIKU}/invoke", BODY, dict(signed.headers))
    assert status == 401 and b"CLAUDE_CODE_SKIP_BEDROCK_AUTH" in data
    assert b"AKIDCLIENT" not in data and len(fake_upstream.requests) == before
