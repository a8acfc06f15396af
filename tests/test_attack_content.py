"""Attacks on what midway keeps of a conversation: secrets audit stores verbatim (#17 item 13)
and two different tool schemas sharing a cache answer (item 16). A real midway with the real
plugins, in front of the fake upstream."""

from __future__ import annotations

import base64
import secrets
import string
from collections.abc import Callable
from typing import Any

import anthropic
import orjson
import pytest

import midway_audit
import midway_cache
from midway.keys.tokens import new_secret
from midway.testing import FakeUpstream, RunningMidway, wait_for


def _rand(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(doc)).rstrip(b"=").decode()


# name -> (a secret that must be redacted, a near miss of the same shape that must be kept)
def _cases() -> dict[str, tuple[str, str]]:
    jwt = (f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64({'sub': _rand(12), 'iat': 1})}."
           f"{_rand(43, string.ascii_letters + string.digits + '_-')}")
    return {
        "midway_key": (new_secret()[1], f"mw-{_rand(12, 'abcdefghijklmnopqrstuvwxyz234567')}"),
        "jwt": (jwt, f"eyJ{_rand(20)}"),  # one base64 segment is not a token
        "stripe_key": (f"sk_live_{_rand(24)}", f"pk_live_{_rand(24)}"),  # publishable: public
        "stripe_restricted_key": (f"rk_live_{_rand(24)}", f"task_live_{_rand(4)}"),
        "huggingface_token": (f"hf_{_rand(34)}", "hf_hub_download"),
    }


@pytest.mark.attack(13, "audit stores mw- keys, JWTs, Stripe and Hugging Face tokens verbatim")
@pytest.mark.parametrize("kind", list(_cases()))
def test_audit_redacts_token(kind: str, midway_factory: Callable[..., RunningMidway]) -> None:
    secret, near_miss = _cases()[kind]
    running = midway_factory(plugins=[("audit", midway_audit)], config={"audit": {}})
    audit = running.midway.services["audit"]
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0)
    answer = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=8,
        messages=[{"role": "user", "content": f"token {secret} and {near_miss} here"}])
    request_id = answer.headers["x-midway-request-id"]
    wait_for(lambda: running.call(audit.get(request_id)) is not None)
    stored = orjson.dumps(running.call(audit.get(request_id))).decode()
    assert secret not in stored
    assert "[REDACTED:" in stored
    assert near_miss in stored  # the pattern is not so wide it eats ordinary text


def _tool(inner: dict[str, Any]) -> dict[str, Any]:
    return {"name": "configure", "description": "Set a proxy option.",
            "input_schema": {"type": "object", "properties": {"cache_control": inner}}}


@pytest.mark.attack(16, "two tool schemas differing only inside a cache_control property "
                        "share a cache answer")
def test_cache_keeps_cache_control_properties_apart(
        midway_factory: Callable[..., RunningMidway], fake_upstream: FakeUpstream) -> None:
    running = midway_factory(plugins=[("cache", midway_cache)],
                             config={"cache": {"rules": [{"model": "*"}]}})  # every request
    cache = running.midway.services["cache"]
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0)
    ask: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 64,
                           "messages": [{"role": "user", "content": "Configure it."}]}
    first = client.messages.with_raw_response.create(
        **ask, tools=[_tool({"type": "string", "enum": ["no-store"]})])
    wait_for(lambda: running.call(cache.stats())["stores"] >= 1)
    other = client.messages.with_raw_response.create(
        **ask, tools=[_tool({"type": "integer", "minimum": 0})])
    assert first.headers["x-midway-cache"] == "miss"
    assert other.headers["x-midway-cache"] == "miss"
    assert len(fake_upstream.messages_requests) == 2
    # Anthropic's own markers still do not split the cache: on the tool, a system block and
    # a message's content block.
    marked = client.messages.with_raw_response.create(
        **{**ask, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Configure it.", "cache_control": {"type": "ephemeral"}}]}]},
        tools=[{**_tool({"type": "string", "enum": ["no-store"]}),
                "cache_control": {"type": "ephemeral"}}])
    assert marked.headers["x-midway-cache"] == "hit"


def test_cases_are_distinct() -> None:
    """The near misses really differ from the secrets (a guard on the table above)."""
    for secret, near_miss in _cases().values():
        assert near_miss not in secret
