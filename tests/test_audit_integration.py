"""midway-audit with the real billing and cache plugins: the record carries billing's cost
and the cache's outcome (audit's post_response runs last), a cache hit included."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import orjson

import midway_audit
import midway_billing
import midway_cache
from midway.testing import wait_for


def test_audit_records_cost_and_cache_outcome(fake_upstream, midway_factory):
    running = midway_factory(plugins=[("billing", midway_billing), ("cache", midway_cache),
                                      ("audit", midway_audit)],
                             config={"cache": {"rules": [{"model": "*"}]}})  # opt in
    audit = running.midway.services["audit"]
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0)
    ask = dict(model="claude-sonnet-4-6", max_tokens=20,
               messages=[{"role": "user", "content": "What is 2 + 2?"}])
    first = client.messages.with_raw_response.create(**ask)
    wait_for(lambda: running.call(audit.get(first.headers["x-midway-request-id"])) is not None)
    second = client.messages.with_raw_response.create(**ask)
    assert second.headers.get("x-midway-cache") == "hit"
    wait_for(lambda: running.call(audit.get(second.headers["x-midway-request-id"])) is not None)

    miss = running.call(audit.get(first.headers["x-midway-request-id"]))
    hit = running.call(audit.get(second.headers["x-midway-request-id"]))
    assert miss["cache"] == "miss" and Decimal(miss["cost_usd"]) > 0
    assert miss["annotations"]["billing"]
    assert hit["cache"] == "hit" and hit["answered_by"] == "cache"
    assert Decimal(hit["cost_usd"]) == 0  # a hit is not charged, and audit saw that
    # the replayed answer is recorded like any other: same content, the cache's fresh ids
    hit_message, miss_message = (orjson.loads(r["response_body"]) for r in (hit, miss))
    assert hit_message["content"] == miss_message["content"]
    assert running.call(audit.verify())["ok"]
