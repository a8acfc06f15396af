"""Rate-limit header parsing, key headroom, the retry budget, the affinity map."""

from __future__ import annotations

import email.utils

from midway_router.affinity import AffinityMap
from midway_router.budget import RetryBudget
from midway_router.pool import build
from midway_router.ratelimit import exhausted_until, read_limits, retry_after
from midway_router.settings import parse

NOW = 1_800_000_000.0


def test_read_limits_and_exhaustion():
    limits = read_limits({
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:30Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": "2027-01-15T08:00:01.500+00:00",
        "anthropic-ratelimit-tokens-remaining": "not-a-number",
    })
    assert set(limits) == {"requests", "input-tokens"}
    assert limits["requests"].limit == 50 and limits["requests"].remaining == 0
    reset = limits["requests"].reset
    assert reset is not None and reset - limits["input-tokens"].reset == 28.5
    assert exhausted_until(limits, reset - 10) == reset
    assert exhausted_until(limits, reset + 1) is None  # the window has turned over


def test_retry_after_seconds_and_http_date():
    assert retry_after({"retry-after": "7"}, NOW) == 7.0
    date = email.utils.formatdate(NOW + 12, usegmt=True)
    assert retry_after({"retry-after": date}, NOW) == 12.0
    assert retry_after({"retry-after": "soon"}, NOW) is None
    assert retry_after({}, NOW) is None


def test_headroom_counts_what_was_sent_since_the_report():
    up = build(parse({"upstreams": [{"name": "a", "keys": ["k1"]}]}).upstreams[0])
    key = up.keys[0]
    assert key.headroom(100, NOW) == 1.0  # nothing known yet
    key.report(read_limits({"anthropic-ratelimit-requests-limit": "10",
                            "anthropic-ratelimit-requests-remaining": "5",
                            "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z",
                            "anthropic-ratelimit-input-tokens-limit": "1000",
                            "anthropic-ratelimit-input-tokens-remaining": "900",
                            "anthropic-ratelimit-input-tokens-reset":
                                "2099-01-01T00:00:00Z"}))
    assert key.headroom(100, NOW) == 0.4  # (5 - 1) / 10 requests left is the tighter limit
    for _ in range(4):
        key.sent(100)
    assert key.headroom(100, NOW) == 0.0
    key.sent(100)
    assert key.headroom(100, NOW) < 0  # would not fit: chosen only if nothing else can
    assert key.in_flight == 5
    assert key.headroom(950, NOW) < key.headroom(1, NOW)


def test_retry_budget_caps_retries_to_a_share_of_traffic():
    budget = RetryBudget(ratio=0.5, min_per_second=0.2)  # floor: 2 retries per 10 s
    for _ in range(10):
        budget.request(NOW)
    allowed = sum(budget.try_retry(NOW + 1) for _ in range(20))
    assert allowed == 7  # 2 + 0.5 × 10
    assert budget.try_retry(NOW + 30)  # the old traffic and retries have aged out


def test_affinity_map_expires_and_stays_bounded():
    sessions = AffinityMap(ttl=60, max_entries=3)
    sessions.set("s1", "up", "fp1", NOW)
    assert sessions.get("s1", NOW + 59) == ("up", "fp1")
    assert sessions.get("s1", NOW + 61) is None
    for i in range(5):
        sessions.set(f"s{i}", "up", f"fp{i}", NOW)
    assert len(sessions) == 3
    assert sessions.get("s0", NOW) is None and sessions.get("s4", NOW) == ("up", "fp4")
