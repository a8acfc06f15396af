"""A finished request leaves nothing to the cyclic collector, with every governance plugin
loaded and acting (audit, billing, cache, dashboard, router). An object in a reference cycle
lives until a full collection; under load that held every exchange (its bodies, headers and
the plugins' state) for seconds: the summed RSS the router's round was once reverted for
(docs/benchmarks.md). ``gc.DEBUG_SAVEALL`` keeps what a collection finds unreachable in
``gc.garbage``, so the test names what was in a cycle."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator

import anthropic
import pytest

import midway_audit
import midway_billing
import midway_cache
import midway_dashboard
import midway_router
from midway.testing import FakeUpstream, RunningMidway, wait_for

KEY = "sk-ant-cycles"


@pytest.fixture
def gateway(midway_factory: Callable[..., RunningMidway], fake_upstream: FakeUpstream
            ) -> RunningMidway:
    config = {
        "router": {"upstreams": [{"name": "anthropic", "url": fake_upstream.url,
                                  "keys": ["sk-ant-pool-1", "sk-ant-pool-2"]}],
                   "rules": [{"name": "opus", "match": {"model": "claude-opus-*"},
                              "target": "anthropic"}]},
        "billing": {"budgets": [{"name": "daily", "scope": "principal", "match": "*",
                                 "period": "day", "limit_usd": "100", "mode": "hard"}]},
        "cache": {"rules": [{"model": "*"}]},  # the cache acts on every request
        "audit": {},
    }
    return midway_factory(plugins=[("audit", midway_audit), ("billing", midway_billing),
                                   ("cache", midway_cache), ("router", midway_router),
                                   ("dashboard", midway_dashboard)], config=config)


@pytest.fixture
def saving_garbage() -> Iterator[list[object]]:
    """The collector off, and what a collection finds unreachable kept in ``gc.garbage``."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        gc.collect()


def traffic(gateway: RunningMidway, fake_upstream: FakeUpstream, rounds: int) -> int:
    """JSON and streamed requests, misses and cache hits; how many were answered."""
    client = anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0,
                                 default_headers={"x-claude-code-session-id": "sess-cycles"})
    answered = 0
    for n in range(rounds):
        for model in ("claude-sonnet-4-6", "claude-opus-4-1"):
            for _ in range(2):  # the second is a cache hit
                message = client.messages.create(model=model, max_tokens=64, messages=[
                    {"role": "user", "content": f"json {n}"}])
                assert message.content[0].text  # type: ignore[union-attr]
                with client.messages.stream(model=model, max_tokens=64, messages=[
                        {"role": "user", "content": f"stream {n}"}]) as stream:
                    assert stream.get_final_text()
                answered += 2
    client.close()
    return answered


def test_finished_requests_leave_nothing_in_a_reference_cycle(
        gateway: RunningMidway, fake_upstream: FakeUpstream,
        saving_garbage: list[object]) -> None:
    audit = gateway.midway.services["audit"]
    warm = traffic(gateway, fake_upstream, 1)  # first-use objects (caches, compiled rules)
    wait_for(lambda: len(gateway.call(audit.query())) == warm)
    gc.collect()
    saving_garbage.clear()
    answered = traffic(gateway, fake_upstream, 3)
    # every request's post_response has run once audit has its record
    wait_for(lambda: len(gateway.call(audit.query())) == warm + answered)
    gc.collect()
    ours = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in saving_garbage
                   if type(o).__module__.startswith("midway"))
    assert not ours, f"in reference cycles after {answered} requests: {dict(ours)}"
