"""Claude on Vertex AI behind midway (``kind = "vertex"``): google-auth mints the access token
from a service account against a fake token endpoint that verifies the signed JWT, the fake
Vertex serves only a bearer of a token it issued; rawPredict, streamRawPredict and count-tokens;
Google's errors become Anthropic's; tokens are renewed before they expire."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from fake_vertex import FakeGoogle, service_account

import midway_router.router
from midway.config import ConfigError
from midway.testing import RunningMidway, wait_for
from midway_router import adapters
from midway_router.settings import RouterSettings, parse

BASE = "/v1/projects/fake-project/locations/us-east5/publishers/anthropic/models"


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    server = FakeGoogle()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def account(google: FakeGoogle, tmp_path: Path) -> Path:
    info, public = service_account(google.token_uri)
    google.public_key, google.email = public, info["client_email"]
    path = tmp_path / "vertex-key.json"
    path.write_bytes(orjson.dumps(info))
    return path


def start(midway_factory: Callable[..., RunningMidway], router_plugin: Any, google: FakeGoogle,
          account: Path, **extra: Any) -> RunningMidway:
    upstream = {"name": "vertex", "kind": "vertex", "region": "us-east5", "url": google.url,
                "service_account": f"file:{account}", **extra}
    return midway_factory(plugins=[router_plugin], config={"router": {
        "upstreams": [upstream], "target": "vertex", "backoff_base": 0.0}})


@pytest.fixture
def proxy(midway_factory: Callable[..., RunningMidway], router_plugin: Any, google: FakeGoogle,
          account: Path) -> RunningMidway:
    return start(midway_factory, router_plugin, google, account)


def client(proxy: RunningMidway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-client-own", max_retries=0)


def test_messages_streams_and_counts_reach_vertex_with_a_minted_token(
        proxy: RunningMidway, google: FakeGoogle) -> None:
    sdk = client(proxy)
    message = sdk.messages.create(
        model="claude-sonnet-4-5-20250929", max_tokens=20,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})
    assert message.content[0].type == "text"
    seen = google.requests[-1]
    assert seen.path == f"{BASE}/claude-sonnet-4-5@20250929:rawPredict"
    assert "model" not in seen.body and seen.body["anthropic_version"] == "vertex-2023-10-16"
    assert seen.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    token = seen.headers["authorization"].removeprefix("Bearer ")
    assert token in google.issued  # minted by google-auth through the fake token endpoint
    assert "sk-ant-client-own" not in repr(dict(seen.headers))  # never to Google

    with sdk.messages.stream(model="claude-haiku-4-5-20251001", max_tokens=20,
                             messages=[{"role": "user", "content": "hi"}]) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens > 0
    assert google.requests[-1].path == f"{BASE}/claude-haiku-4-5@20251001:streamRawPredict"

    counted = sdk.messages.count_tokens(model="claude-haiku-4-5-20251001",
                                        messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens > 0
    assert google.requests[-1].path == f"{BASE}/count-tokens:rawPredict"
    assert google.requests[-1].body["model"] == "claude-haiku-4-5@20251001"


def test_a_vertex_format_client_to_a_vertex_upstream(proxy: RunningMidway,
                                                     google: FakeGoogle) -> None:
    vertex = anthropic.AnthropicVertex(base_url=proxy.url + "/v1", region="europe-west1",
                                       project_id="the-clients-project",
                                       access_token="client-google-token", max_retries=0)
    message = vertex.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=20,
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].type == "text"
    seen = google.requests[-1]
    # midway's project and region, midway's token: the client's never leave
    assert seen.path == f"{BASE}/claude-sonnet-4-5@20250929:rawPredict"
    assert "client-google-token" not in repr(dict(seen.headers))
    # the client's anthropic_version body field goes on as it came
    assert seen.body["anthropic_version"] == anthropic._constants.ANTHROPIC_API_VERSION


@pytest.mark.parametrize(("status", "name", "expected"), [
    (429, "RESOURCE_EXHAUSTED", "rate_limit_error"),
    (503, "UNAVAILABLE", "overloaded_error"),
    (403, "PERMISSION_DENIED", "permission_error"),
    (400, "INVALID_ARGUMENT", "invalid_request_error"),
])
def test_google_errors_become_anthropic_errors(proxy: RunningMidway, google: FakeGoogle,
                                               status: int, name: str, expected: str) -> None:
    google.errors.append((status, {"code": status, "message": f"Vertex says {name}",
                                   "status": name}))
    with pytest.raises(anthropic.APIStatusError) as caught:
        client(proxy).messages.create(model="claude-sonnet-4-5", max_tokens=5,
                                      messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == status
    error = caught.value.body["error"]
    assert error["type"] == expected
    if status != 429:  # a 429 rests the key: the router then speaks for the pool
        assert error["message"] == f"Vertex says {name}"


def test_tokens_are_renewed_before_they_expire(
        midway_factory: Callable[..., RunningMidway], router_plugin: Any, google: FakeGoogle,
        account: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(midway_router.router, "TOKEN_CHECK_EVERY", 0.05)
    google.lifetime = 200  # under the 5-minute margin: every check renews it
    proxy = start(midway_factory, router_plugin, google, account)
    wait_for(lambda: len(google.issued) >= 3)
    for token in list(google.issued):  # every token issued so far is now expired
        google.issued[token] = 0
    wait_for(lambda: any(expiry > 0 for expiry in google.issued.values()))
    message = client(proxy).messages.create(model="claude-sonnet-4-5", max_tokens=5,
                                            messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].type == "text"


def test_a_key_the_token_endpoint_refuses_is_a_503_naming_why(
        midway_factory: Callable[..., RunningMidway], router_plugin: Any, google: FakeGoogle,
        account: Path) -> None:
    google.public_key, _ = service_account(google.token_uri)[1], None  # another key's half
    proxy = start(midway_factory, router_plugin, google, account)
    assert google.grants_refused >= 1 and not google.issued
    with pytest.raises(anthropic.APIStatusError) as caught:
        client(proxy).messages.create(model="claude-sonnet-4-5", max_tokens=5,
                                      messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert "no valid Google access token" in caught.value.message
    assert "invalid_grant" in caught.value.message
    assert "PRIVATE KEY" not in caught.value.message
    assert not google.requests


def test_configuration_mistakes_are_one_line(tmp_path: Path) -> None:
    def settings(**upstream: Any) -> RouterSettings:
        return parse({"upstreams": [{"name": "v", "kind": "vertex", **upstream}]})

    with pytest.raises(ConfigError, match="needs a region"):
        settings(service_account="file:/x.json")
    with pytest.raises(ConfigError, match="needs service_account"):
        settings(region="us-east5")
    spec = settings(region="us-east5", service_account="env:X").upstreams[0]
    assert spec.url == "https://us-east5-aiplatform.googleapis.com"
    with pytest.raises(ConfigError, match="is not JSON"):
        adapters.vertex(spec, "not json")
    with pytest.raises(ConfigError, match="not a service account key file"):
        adapters.vertex(spec, '{"type": "authorized_user"}')
