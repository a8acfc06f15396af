"""Attacks on a key's scope through a real ``midway serve`` with keys and billing (#17 items 2,
14 and 15): a batch naming models beyond the key's, a project header naming another project,
a derived key set to dodge its parent's project, and derived keys spending past their parent's
budget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hardening_support import MSG, Server
from test_attack_revoke import _call, admin

from midway.fake_upstream import Reply
from midway.testing import FakeUpstream

CONFIG = """
[midway]
admin_key = "env:HARDEN_ADMIN_KEY"
plugins = ["billing"]

[keys]
enabled = true
poll_interval = 0.05

[[billing.budgets]]
name = "per-key"
scope = "principal"
period = "total"
limit_usd = "0.01"
"""


@pytest.fixture
def server(tmp_path: Path, fake_upstream: FakeUpstream) -> Iterator[Server]:
    running = Server(tmp_path, CONFIG, fake_upstream.url)
    try:
        yield running.start()
    finally:
        running.ensure_stopped()


def key(server: Server, **spec: object) -> dict[str, object]:
    status, created = admin(server, "POST", "/keys", {"name": "k", **spec})
    assert status == 201, created
    return created  # type: ignore[no-any-return]


@pytest.mark.attack(2, "a model-scoped key submits a batch of other models")
def test_batch_requests_are_held_to_the_key_models(server: Server,
                                                   fake_upstream: FakeUpstream) -> None:
    haiku = key(server, models=["claude-haiku-*"])
    batch = {"requests": [{"custom_id": f"r{i}", "params": {
        "model": "claude-opus-4-1", "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}]}} for i in range(100)]}
    status, answer = _call(f"{server.url}/v1/messages/batches", "POST", str(haiku["secret"]),
                           batch)
    assert status == 403, answer
    assert "claude-opus-4-1" in answer["error"]["message"]
    unnamed = {"requests": [{"custom_id": "r", "params": {"max_tokens": 1, "messages": []}}]}
    status, _ = _call(f"{server.url}/v1/messages/batches", "POST", str(haiku["secret"]),
                      unnamed)
    assert status == 403
    status, _ = _call(f"{server.url}/v1/messages/count_tokens", "POST", str(haiku["secret"]),
                      {"model": "claude-opus-4-1", "messages": []})
    assert status == 403
    assert not [r for r in fake_upstream.requests if "batches" in r.path
                or "count_tokens" in r.path]


@pytest.mark.attack(14, "a key names another project, or a derived key picks its own")
def test_projects_are_part_of_the_scope(server: Server) -> None:
    bound = key(server, labels={"project": "apollo"}, capabilities=["keys:create"])
    status, answer = _call(f"{server.url}/v1/messages", "POST", str(bound["secret"]), MSG,
                           headers={"x-midway-project": "gemini"})
    assert status == 403 and "apollo" in answer["error"]["message"], answer
    status, _ = _call(f"{server.url}/v1/messages", "POST", str(bound["secret"]), MSG,
                      headers={"x-midway-project": "apollo"})
    assert status == 200
    fixed = key(server, allow_project_header=False, capabilities=["keys:create"])
    status, answer = _call(f"{server.url}/_midway/keys", "POST", str(fixed["secret"]),
                           {"name": "dodger", "labels": {"project": "free"}})
    assert status == 403, answer
    status, answer = _call(f"{server.url}/_midway/keys", "POST", str(bound["secret"]),
                           {"name": "dodger", "labels": {"project": "free"}})
    assert status == 403, answer


@pytest.mark.attack(15, "derived keys each get a fresh per-key budget")
def test_a_parent_budget_covers_its_descendants(server: Server,
                                               fake_upstream: FakeUpstream) -> None:
    parent = key(server, capabilities=["keys:create"])
    served = 0
    # Each answer really costs $0.015 (1000 output tokens of Sonnet), more than the $0.01
    # budget, while its estimate ($0.0015 at max_tokens 100) fits in a fresh one.
    fake_upstream.reply(*[Reply(usage={"input_tokens": 10, "output_tokens": 1000})] * 20)
    for i in range(20):
        status, child = _call(f"{server.url}/_midway/keys", "POST", str(parent["secret"]),
                              {"name": f"child-{i}"})
        assert status == 201, child
        status, answer = _call(f"{server.url}/v1/messages", "POST", str(child["secret"]),
                               {**MSG, "max_tokens": 100})
        assert status in (200, 429), answer
        served += status == 200
    assert served <= 1, f"{served} derived keys were served past their parent's budget"


@pytest.mark.attack(2, "a key past its hard budget submits a batch")
def test_batches_are_priced_against_hard_budgets(server: Server,
                                                 fake_upstream: FakeUpstream) -> None:
    spender = key(server)
    fake_upstream.reply(Reply(usage={"input_tokens": 10, "output_tokens": 1000}))
    status, answer = _call(f"{server.url}/v1/messages", "POST", str(spender["secret"]),
                           {**MSG, "max_tokens": 100})
    assert status == 200, answer
    small = {"requests": [{"custom_id": "r", "params": {
        "model": "claude-haiku-4-5", "max_tokens": 1,
        "messages": [{"role": "user", "content": "hi"}]}}]}
    status, answer = _call(f"{server.url}/v1/messages/batches", "POST",
                           str(spender["secret"]), small)
    assert status == 429, answer
    # A fresh key: 100 Opus requests may cost far more than its $0.01.
    fresh = key(server)
    big = {"requests": [{"custom_id": f"r{i}", "params": {
        "model": "claude-opus-4-1", "max_tokens": 1000,
        "messages": [{"role": "user", "content": "hi"}]}} for i in range(100)]}
    status, answer = _call(f"{server.url}/v1/messages/batches", "POST", str(fresh["secret"]),
                           big)
    assert status == 429 and "would reserve" in answer["error"]["message"], answer
    assert not [r for r in fake_upstream.requests if "batches" in r.path]
