"""Key health shared through Redis: a key resting on one instance rests on all."""

from __future__ import annotations

import json

import anthropic
import pytest
from click.testing import CliRunner
from conftest import key_of, wait_idle

from midway.cli import cli
from midway.secrets_ref import fingerprint
from midway.testing import Reply, wait_for

KEYS = ["sk-ant-shared-a", "sk-ant-shared-b"]
MSG = {"model": "claude-sonnet-4-6", "max_tokens": 16,
       "messages": [{"role": "user", "content": "hi"}]}


def config(url, redis_url, prefix):
    return {"router": {"upstreams": [{"name": "anthropic", "url": url, "keys": KEYS}],
                       "state": redis_url, "state_prefix": prefix, "status_interval": 0.05}}


def health(proxy, secret):
    rows = {r["key"]: r for r in proxy.midway.services["router"].status()}
    return rows[fingerprint(secret)]["health"]


def test_rest_and_disable_spread_to_every_instance(fake_upstream, midway_factory,
                                                   router_plugin, redis_url, redis_prefix,
                                                   tmp_path):
    def answer(rec):
        if key_of(rec) == KEYS[0]:
            return Reply(status=429, headers={"retry-after": "60"})
        return Reply()

    fake_upstream.fake.default = answer
    shared = config(fake_upstream.url, redis_url, redis_prefix)
    one = midway_factory(plugins=[router_plugin], config=shared)
    two = midway_factory(plugins=[router_plugin], config=shared)
    sdk_one = anthropic.Anthropic(base_url=one.url, api_key="c", max_retries=0)
    for _ in range(40):
        sdk_one.messages.create(**MSG)
        if any(key_of(r) == KEYS[0] for r in fake_upstream.messages_requests):
            break
    assert health(one, KEYS[0]) == "resting"
    wait_for(lambda: health(two, KEYS[0]) == "resting")
    # The second instance never tries the resting key.
    seen = len([r for r in fake_upstream.messages_requests if key_of(r) == KEYS[0]])
    sdk_two = anthropic.Anthropic(base_url=two.url, api_key="c", max_retries=0)
    for _ in range(10):
        sdk_two.messages.create(**MSG)
    assert len([r for r in fake_upstream.messages_requests if key_of(r) == KEYS[0]]) == seen
    # An instance that starts later learns the rest from Redis.
    three = midway_factory(plugins=[router_plugin], config=shared)
    assert health(three, KEYS[0]) == "resting"

    # `midway router status` merges the instances' snapshots from Redis.
    for proxy in (one, two, three):
        wait_idle(proxy)
    conf = tmp_path / "midway.toml"
    conf.write_text(f'[router]\nstate = "{redis_url}"\nstate_prefix = "{redis_prefix}"\n')

    def merged():
        result = CliRunner().invoke(cli, ["router", "status", "--json", "--config", str(conf)],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return {r["key"]: r for r in json.loads(result.output)}

    served = sum(1 for r in fake_upstream.messages_requests if key_of(r) == KEYS[1])
    # every instance's snapshot as of its last request (each is rewritten every 0.05 s)
    wait_for(lambda: merged().get(fingerprint(KEYS[0]), {}).get("instances") == 3 and
             merged().get(fingerprint(KEYS[1]), {}).get("served") == served)
    rows = merged()
    assert rows[fingerprint(KEYS[0])]["health"] == "resting"
    assert rows[fingerprint(KEYS[1])]["served"] == served


def test_an_instance_that_learns_an_overload_rest_answers_529(
        fake_upstream, midway_factory, router_plugin, redis_url, redis_prefix):
    fake_upstream.fake.default = lambda rec: Reply(
        status=529, error_type="overloaded_error", headers={"retry-after": "30"})
    one_key = {"router": {"upstreams": [{"name": "anthropic", "url": fake_upstream.url,
                                         "keys": KEYS[:1]}],
                          "state": redis_url, "state_prefix": redis_prefix}}
    one = midway_factory(plugins=[router_plugin], config=one_key)
    two = midway_factory(plugins=[router_plugin], config=one_key)
    sdk = anthropic.Anthropic(base_url=one.url, api_key="c", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as relayed:
        sdk.messages.create(**MSG)
    assert relayed.value.status_code == 529
    wait_for(lambda: health(two, KEYS[0]) == "resting")
    sent = len(fake_upstream.messages_requests)
    with pytest.raises(anthropic.APIStatusError) as refused:
        anthropic.Anthropic(base_url=two.url, api_key="c", max_retries=0).messages.create(**MSG)
    assert refused.value.status_code == 529
    assert refused.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert len(fake_upstream.messages_requests) == sent
