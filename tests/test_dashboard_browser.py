"""The dashboard with every plugin installed, in headless chromium: real SDK traffic through
midway (client keys, router key pool, billing with a budget, cache, audit) to the fake
upstream, then each page is loaded and checked. One screenshot per page goes to
artifacts/screenshots/ (or $MIDWAY_SCREENSHOTS)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import MessageParam

import midway_audit
import midway_billing
import midway_cache
import midway_dashboard
import midway_router
from midway.fake_upstream import Reply
from midway.secrets_ref import fingerprint
from midway.testing import FakeUpstream, RunningMidway, wait_for
from midway_dashboard.testing import browser, screenshot_dir

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "adm-integration-9f8e7d6c"
ALICE, BOB = "mw-alice-key-0001", "mw-bob-key-0002"
POOL = ["sk-ant-pool-one", "sk-ant-pool-two"]
ANSWER = "Paris is the capital of France, on the Seine."


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as instance:
        yield instance


@pytest.fixture
def gateway(midway_factory: Callable[..., RunningMidway], fake_upstream: FakeUpstream,
            monkeypatch: pytest.MonkeyPatch) -> RunningMidway:
    monkeypatch.setenv("MIDWAY_TEST_DASHBOARD_ADMIN", ADMIN)
    config = {
        "midway": {"client_keys": [{"key": ALICE, "name": "alice", "team": "search"},
                                   {"key": BOB, "name": "bob", "team": "platform"}]},
        "router": {"upstreams": [{"name": "anthropic", "url": fake_upstream.url,
                                  "keys": POOL}]},
        "billing": {"budgets": [{"name": "team-daily", "scope": "team", "match": "*",
                                 "period": "day", "limit_usd": "5.00", "mode": "soft"}]},
        "cache": {"rules": [{"model": "*"}]},  # the cache is opt-in
        "audit": {},
    }
    return midway_factory(plugins=[("audit", midway_audit), ("billing", midway_billing),
                                   ("cache", midway_cache), ("router", midway_router),
                                   ("dashboard", midway_dashboard)],
                          config=config, admin_key="env:MIDWAY_TEST_DASHBOARD_ADMIN")


def send_traffic(gateway: RunningMidway, fake_upstream: FakeUpstream) -> None:
    alice = anthropic.Anthropic(base_url=gateway.url, api_key=ALICE, max_retries=0)
    bob = anthropic.Anthropic(base_url=gateway.url, api_key=BOB, max_retries=0,
                              default_headers={"x-claude-code-session-id": "sess-bob",
                                               "x-claude-code-agent-id": "explore-1"})
    usage = {"input_tokens": 1200, "output_tokens": 300}
    fake_upstream.reply(Reply(content=[{"type": "text", "text": ANSWER}], usage=usage))
    question: list[MessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
    for _ in range(3):  # the second and third are cache hits
        message = alice.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                        messages=question)
        assert message.content[0].text == ANSWER  # type: ignore[union-attr]
    fake_upstream.reply(Reply(content=[{"type": "text", "text": "Streaming hello."}],
                              usage={"input_tokens": 800, "output_tokens": 150}))
    with bob.messages.stream(model="claude-haiku-4-5", max_tokens=64,
                             messages=[{"role": "user", "content": "Say hello"}]) as stream:
        assert stream.get_final_text() == "Streaming hello."
    assert len(fake_upstream.messages_requests) == 2


def open_page(chromium: Any, context: Any, url: str) -> tuple[Any, list[str]]:
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.goto(url)
    return page, problems


def test_every_page_with_every_plugin(gateway: RunningMidway, fake_upstream: FakeUpstream,
                                      chromium: Any) -> None:
    send_traffic(gateway, fake_upstream)
    audit = gateway.midway.services["audit"]
    wait_for(lambda: len(gateway.call(audit.query(limit=10))) == 4)
    shots = screenshot_dir(ROOT)
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    base = f"{gateway.url}/_midway"

    # Protected: the browser gets the login form first, and the key is never in a URL.
    page, problems = open_page(chromium, context, f"{base}/")
    assert page.title() == "midway · Log in"
    page.screenshot(path=shots / "login.png", full_page=True)
    page.fill("input[name=key]", ADMIN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    assert problems == ["console error: Failed to load resource: the server responded with a "
                        "status of 401 (Unauthorized)"]  # the login form's own status
    problems.clear()
    page.wait_for_selector("#rps .extra:has-text('4 since start')")
    assert page.inner_text("#errors .value") == "0"
    assert page.inner_text("#cost .value") != "$0.00"
    assert page.locator("#plugin-status .plugin.on").count() == 4
    page.screenshot(path=shots / "traffic.png", full_page=True)
    assert problems == []

    page, problems = open_page(chromium, context, f"{base}/spend")
    page.wait_for_selector("#chart-spend canvas")
    report = page.inner_text("#panel-spend-report")
    assert "search" in report and "platform" in report
    budgets = page.inner_text("#panel-budgets")
    assert "team-daily" in budgets and "$5.00" in budgets
    legend = page.inner_text("#chart-spend")
    assert "budget search (day)" in legend and "budget platform (day)" in legend
    page.select_option("select[name=by]", "model")
    page.wait_for_selector("#panel-spend-report:has-text('claude-haiku-4-5')")
    page.select_option("select[name=by]", "team")
    page.wait_for_selector("#panel-spend-report:has-text('platform')")
    sessions = page.inner_text("#panel-sessions")
    assert "sess-bob" in sessions and "(main)" in sessions and "explore-1" in sessions
    page.screenshot(path=shots / "spend.png", full_page=True)
    assert problems == []

    page, problems = open_page(chromium, context, f"{base}/cache")
    page.wait_for_selector("#hit-rate")
    # alice's first question and bob's stream missed; alice's two repeats hit.
    assert page.inner_text("#hit-rate .value") == "50.0 %"
    assert "2 hits · 2 misses" in page.inner_text("#hit-rate .extra")
    assert page.inner_text("#saved-usd .value") != "$0.00"
    assert "hit" in page.inner_text("#panel-cache-outcomes")
    page.screenshot(path=shots / "cache.png", full_page=True)
    assert problems == []

    page, problems = open_page(chromium, context, f"{base}/upstreams")
    page.wait_for_selector("#router-status td")
    router = page.inner_text("#router-status")
    for key in POOL:
        assert fingerprint(key) in router
        assert key not in router
    assert "ok" in router
    page.wait_for_selector("#upstream-window td:has-text('anthropic')")
    page.screenshot(path=shots / "upstreams.png", full_page=True)
    assert problems == []

    page, problems = open_page(chromium, context, f"{base}/requests")
    page.wait_for_selector("#results table.requests tbody tr")
    assert page.locator("#results table.requests tbody tr").count() == 4
    page.fill("input[name=text]", "Say hello")
    page.click("#search button[type=submit]")
    page.wait_for_url("**/requests?*text=Say+hello*")
    page.wait_for_selector("#results table.requests")
    rows = page.locator("#results table.requests tbody tr")
    assert rows.count() == 1 and "bob" in rows.inner_text()
    page.screenshot(path=shots / "requests.png", full_page=True)
    rows.locator("a").click()
    page.wait_for_selector("#answer")
    assert page.inner_text("#answer") == "Streaming hello."
    assert "Say hello" in page.inner_text("#prompt")
    assert "claude-haiku-4-5" in page.inner_text("#panel-facts")
    page.screenshot(path=shots / "request.png", full_page=True)
    assert problems == []

    # Logging out ends the session on the server: the cookie the browser held opens nothing.
    cookie = next(c["value"] for c in context.cookies() if c["name"] == "midway_dashboard")
    page.click("form.logout button[type=submit]")
    page.wait_for_url(f"{base}/login")
    assert page.title() == "midway · Log in"
    copied = httpx.get(f"{base}/api/status", cookies={"midway_dashboard": cookie})
    assert copied.status_code == 401
    context.close()


def test_the_spend_page_shows_what_batches_hold(gateway: RunningMidway, chromium: Any) -> None:
    """A Message Batch's estimate is reserved on the budgets until its results are priced:
    the spend page names the batch, who sent it and what it holds, and how to release it."""
    alice = anthropic.Anthropic(base_url=gateway.url, api_key=ALICE, max_retries=0)
    batch = alice.messages.batches.create(requests=[{  # type: ignore[list-item]
        "custom_id": "q1", "params": {"model": "claude-sonnet-4-6", "max_tokens": 4000,
                                      "messages": [{"role": "user", "content": "Hi"}]}}])
    billing = gateway.midway.services["billing"]
    wait_for(lambda: len(gateway.call(billing.batches(held_only=True))) == 1)
    [held] = gateway.call(billing.batches(held_only=True))
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    base = f"{gateway.url}/_midway"
    page, problems = open_page(chromium, context, f"{base}/login")
    page.fill("input[name=key]", ADMIN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    problems.clear()
    page.goto(f"{base}/spend")
    page.wait_for_selector("#panel-batches td")
    shown = page.inner_text("#panel-batches")
    assert batch.id in shown and "alice" in shown and "search" in shown
    assert f"${float(held['held_usd']):.2f}" in shown and "release-batch" in shown
    page.screenshot(path=screenshot_dir(ROOT) / "spend-batches.png", full_page=True)
    assert problems == []
    context.close()
