"""Vertex rawPredict clients (Claude Code with CLAUDE_CODE_USE_VERTEX=1, the SDK's
AnthropicVertex) through midway with client keys, billing and audit: the request reaches an
Anthropic upstream as the Messages request it stands for, every plugin sees one exchange, and
no spelling of the path escapes a key's model scope."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from yarl import URL

import midway_audit
import midway_billing
from midway.testing import FakeUpstream, RunningMidway, wait_for

ALICE = "mw-alice-vertex-test-key-000000000000"
HAIKU_ONLY = "mw-haiku-vertex-test-key-00000000000"
UPSTREAM_KEY = "sk-ant-upstream-vertex"
BASE = "/v1/projects/proj-1/locations/us-east5/publishers/anthropic/models"


@pytest.fixture
def gateway(midway_factory: Any, monkeypatch: pytest.MonkeyPatch) -> RunningMidway:
    monkeypatch.setenv("MW_VERTEX_UPSTREAM_KEY", UPSTREAM_KEY)
    return midway_factory(  # type: ignore[no-any-return]
        plugins=[("billing", midway_billing), ("audit", midway_audit)],
        upstream_api_key="env:MW_VERTEX_UPSTREAM_KEY",
        client_keys=[{"key": ALICE, "name": "alice"},
                     {"key": HAIKU_ONLY, "name": "haiku", "models": ["claude-haiku-*"]}])


def vertex(running: RunningMidway, key: str = ALICE) -> anthropic.AnthropicVertex:
    # CLAUDE_CODE_SKIP_VERTEX_AUTH=1: no Google token, the midway key as the bearer instead
    return anthropic.AnthropicVertex(base_url=running.url + "/v1", region="us-east5",
                                     project_id="proj-1", access_token=key, max_retries=0)


def audit_record(running: RunningMidway, request_id: str) -> dict[str, Any]:
    audit = running.midway.services["audit"]
    wait_for(lambda: running.call(audit.get(request_id)) is not None)
    return running.call(audit.get(request_id))  # type: ignore[no-any-return]


def test_a_vertex_client_is_served_billed_and_audited(gateway: RunningMidway,
                                                      fake_upstream: FakeUpstream) -> None:
    client = vertex(gateway)
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5@20250929", max_tokens=20,
        messages=[{"role": "user", "content": "What is 2 + 2?"}],
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})
    assert raw.parse().content[0].type == "text"
    seen = fake_upstream.messages_requests[-1]
    body = orjson.loads(seen.body)
    assert seen.path == "/v1/messages"
    assert body["model"] == "claude-sonnet-4-5-20250929"  # Anthropic's id for Vertex's
    assert "anthropic_version" not in body  # Anthropic's API refuses the Vertex body field
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert seen.headers["x-api-key"] == UPSTREAM_KEY
    assert ALICE not in repr(dict(seen.headers))  # the midway key never goes upstream

    record = audit_record(gateway, raw.headers["x-midway-request-id"])
    assert record["path"] == "/v1/messages" and record["principal_name"] == "alice"
    assert record["annotations"]["client_format"] == "vertex"
    assert Decimal(record["cost_usd"]) > 0  # billing priced it as claude-sonnet-4-5


def test_a_vertex_stream_and_count_tokens(gateway: RunningMidway,
                                          fake_upstream: FakeUpstream) -> None:
    client = vertex(gateway)
    with client.messages.stream(model="claude-haiku-4-5@20251001", max_tokens=20,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = stream.get_final_text()
        request_id = stream.response.headers["x-midway-request-id"]
    assert text
    sent = orjson.loads(fake_upstream.messages_requests[-1].body)
    assert sent["stream"] is True and sent["model"] == "claude-haiku-4-5-20251001"
    record = audit_record(gateway, request_id)
    assert record["streaming"] and record["usage"]["output_tokens"] > 0
    assert Decimal(record["cost_usd"]) > 0

    counted = client.messages.count_tokens(model="claude-haiku-4-5@20251001",
                                           messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens > 0
    assert fake_upstream.requests[-1].path == "/v1/messages/count_tokens"


def post(running: RunningMidway, path: str, body: dict[str, Any],
         key: str = ALICE) -> tuple[int, dict[str, Any]]:
    async def go() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.post(
                URL(running.url + path, encoded=True), data=orjson.dumps(body),
                headers={"x-api-key": key}) as resp:
            return resp.status, orjson.loads(await resp.read())
    return asyncio.run(go())


VERTEX_BODY = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 5,
               "messages": [{"role": "user", "content": "hi"}]}


def test_without_the_v1_prefix_and_with_an_escaped_at(gateway: RunningMidway,
                                                      fake_upstream: FakeUpstream) -> None:
    path = BASE.removeprefix("/v1") + "/claude-haiku-4-5%4020251001:rawPredict"
    status, answer = post(gateway, path, VERTEX_BODY, HAIKU_ONLY)
    assert status == 200, answer
    assert orjson.loads(fake_upstream.messages_requests[-1].body)["model"] == \
        "claude-haiku-4-5-20251001"


@pytest.mark.parametrize("path", [
    f"{BASE}/claude-opus-4-1@20250805:rawPredict",
    f"{BASE}/claude-opus-4-1@20250805:streamRawPredict",
])
def test_a_haiku_key_may_not_reach_opus_through_vertex(gateway: RunningMidway,
                                                       fake_upstream: FakeUpstream,
                                                       path: str) -> None:
    before = len(fake_upstream.requests)
    status, answer = post(gateway, path, VERTEX_BODY, HAIKU_ONLY)
    assert status == 403 and "claude-opus-4-1" in answer["error"]["message"]
    assert len(fake_upstream.requests) == before


@pytest.mark.parametrize("path", [
    # other spellings of an opus path, each tried to dodge the scope or a path rule
    f"{BASE}/claude-haiku-4-5/../claude-opus-4-1:rawPredict",
    f"{BASE}/./claude-opus-4-1:rawPredict",
    f"{BASE}//claude-opus-4-1:rawPredict",
    f"{BASE}/claude-opus-4-1%3ArawPredict",
    f"{BASE}/claude-opus-4-1:RawPredict",
    f"{BASE.replace('/models', '/Models')}/claude-opus-4-1:rawPredict",
    f"{BASE.replace('anthropic', 'anthropic%2Fx')}/claude-opus-4-1:rawPredict",
    f"{BASE}/claude-opus-4-1:rawPredict/",
    f"{BASE}/count-tokens:streamRawPredict",
    "/v1/projects/p/../../messages:rawPredict",
])
def test_other_spellings_are_refused_before_any_hook(gateway: RunningMidway,
                                                     fake_upstream: FakeUpstream,
                                                     path: str) -> None:
    before = len(fake_upstream.requests)
    status, answer = post(gateway, path, VERTEX_BODY, ALICE)
    assert status in (400, 404), answer
    assert answer["type"] == "error"
    assert len(fake_upstream.requests) == before


def test_a_body_naming_another_model_than_the_path_is_refused(
        gateway: RunningMidway, fake_upstream: FakeUpstream) -> None:
    before = len(fake_upstream.requests)
    status, answer = post(gateway, f"{BASE}/claude-haiku-4-5@20251001:rawPredict",
                          {**VERTEX_BODY, "model": "claude-opus-4-1"}, HAIKU_ONLY)
    assert status == 400 and "claude-opus-4-1" in answer["error"]["message"]
    # count-tokens takes its model from the body: scoped like any other
    status, answer = post(gateway, f"{BASE}/count-tokens:rawPredict",
                          {**VERTEX_BODY, "model": "claude-opus-4-1@20250805"}, HAIKU_ONLY)
    assert status == 403, answer
    assert len(fake_upstream.requests) == before


def test_no_credential_is_refused(gateway: RunningMidway) -> None:
    status, answer = post(gateway, f"{BASE}/claude-haiku-4-5@20251001:rawPredict",
                          VERTEX_BODY, key="")
    assert status == 401 and answer["error"]["type"] == "authentication_error"


def test_a_google_token_is_never_passed_on(midway_proxy: RunningMidway,
                                           fake_upstream: FakeUpstream) -> None:
    # pass-through mode (no client keys): the client's own credential would go upstream
    async def go() -> int:
        async with aiohttp.ClientSession() as session, session.post(
                midway_proxy.url + f"{BASE}/claude-haiku-4-5@20251001:rawPredict",
                data=orjson.dumps(VERTEX_BODY),
                headers={"authorization": "Bearer ya29.a0-google-access-token",
                         "x-api-key": "sk-ant-own-key"}) as resp:
            return resp.status
    assert asyncio.run(go()) == 200
    seen = fake_upstream.messages_requests[-1].headers
    assert "ya29" not in repr(dict(seen)) and seen["x-api-key"] == "sk-ant-own-key"


def test_a_google_token_alone_is_told_how_to_authenticate(gateway: RunningMidway) -> None:
    async def go() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session, session.post(
                gateway.url + f"{BASE}/claude-haiku-4-5@20251001:rawPredict",
                data=orjson.dumps(VERTEX_BODY),
                headers={"authorization": "Bearer ya29.a0-google-access-token"}) as resp:
            return resp.status, await resp.read()
    status, data = asyncio.run(go())
    assert status == 401 and b"CLAUDE_CODE_SKIP_VERTEX_AUTH" in data and b"ya29" not in data
