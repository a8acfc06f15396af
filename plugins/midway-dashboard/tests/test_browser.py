"""The dashboard in headless chromium, with only midway core beside it: live traffic after real
SDK requests, and every plugin panel saying its plugin is not installed."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import pytest
from test_api import distribution_installed

from midway.fake_upstream import Reply
from midway.plugins import module_plugin
from midway.testing import FakeUpstream, RunningMidway

PANELS = {"spend": "midway-billing", "cache": "midway-cache", "upstreams": "midway-router",
          "requests": "midway-audit"}


def open_page(chromium: Any, url: str) -> tuple[Any, list[str]]:
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.goto(url)
    return page, problems


def test_pages_after_real_traffic(start_dashboard: Callable[..., RunningMidway],
                                  fake_upstream: FakeUpstream,
                                  sdk: Callable[..., anthropic.Anthropic], chromium: Any,
                                  screenshots: Path) -> None:
    running = start_dashboard()
    client = sdk(running)
    for i in range(4):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=32,
                               messages=[{"role": "user", "content": f"hello {i}"}])
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=32,
                                messages=[{"role": "user", "content": "stream"}]) as stream:
        assert stream.get_final_text()
    fake_upstream.reply(Reply(status=529, error_type="overloaded_error",
                              error_message="Overloaded"))
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="claude-sonnet-4-6", max_tokens=32,
                               messages=[{"role": "user", "content": "fail"}])

    page, problems = open_page(chromium, f"{running.url}/_midway/")
    page.wait_for_selector("#rps .extra:has-text('6 since start')")
    assert page.title() == "midway · Traffic"
    assert page.inner_text("#errors .value") == "1"
    assert re.fullmatch(r"\d+(\.\d+)? (ms|s)", page.inner_text("#p50 .value"))
    assert page.locator("#chart-rate canvas").count() == 1
    assert page.locator("#chart-latency canvas").count() == 1
    status_table = page.inner_text("#panel-status")
    assert "2xx" in status_table and "5xx" in status_table
    models = page.inner_text("#panel-models")
    assert "claude-sonnet-4-6" in models and "claude-haiku-4-5" in models
    assert "overloaded_error" in page.inner_text("#recent-errors")
    page.wait_for_selector("#plugin-status .plugin")
    assert page.locator("#plugin-status .plugin.off").count() == 4
    # The view updates without a reload: new traffic shows up on the next poll.
    client.messages.create(model="claude-sonnet-4-6", max_tokens=32,
                           messages=[{"role": "user", "content": "one more"}])
    page.wait_for_selector("#rps .extra:has-text('7 since start')")
    page.screenshot(path=screenshots / "core-only-traffic.png", full_page=True)
    assert problems == []

    for name, package in PANELS.items():
        page, problems = open_page(chromium, f"{running.url}/_midway/{name}")
        notice = page.wait_for_selector(".not-installed")
        # Not loaded by this midway: it says how to load it (or, where nox installed only
        # this plugin beside core, how to install it).
        if distribution_installed(package):
            assert f"{package} is installed but not loaded" in notice.inner_text()
            assert "MIDWAY_PLUGINS" in notice.inner_text()
        else:
            assert f"{package} is not installed: pip install" in notice.inner_text()
        assert page.locator("nav a.active").inner_text().lower() == name
        if name == "upstreams":  # the second table needs no plugin
            page.wait_for_selector("#upstream-window td:has-text('default')")
        if name == "requests":  # without audit: what this process served, without bodies
            page.wait_for_selector("#panel-recent td:has-text('claude-haiku-4-5')")
        page.screenshot(path=screenshots / f"core-only-{name}.png", full_page=True)
        assert problems == []


EVIL = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


def test_audit_record_content_is_shown_as_text(start_dashboard: Callable[..., RunningMidway],
                                               chromium: Any, screenshots: Path) -> None:
    """Prompts and answers are written by anyone: they must never become markup."""
    record = {
        "id": "mw_evil", "ts": 1764000000.0, "principal_name": "mallory", "model": EVIL,
        "status": 200, "usage": {"input_tokens": 5, "output_tokens": 9},
        "request_body": '{"model": "x", "messages": [{"role": "user", "content": '
                        '"<b>bold?</b> ' + EVIL.replace('"', '\\"') + '"}]}',
        "response_body": '{"content": [{"type": "text", "text": "answer ' +
                         EVIL.replace('"', '\\"') + '"}]}',
    }

    class Audit:
        async def query(self, **kwargs: Any) -> list[Any]:
            return [{k: v for k, v in record.items() if not k.endswith("_body")}]

        async def get(self, request_id: str) -> dict[str, Any] | None:
            return record if request_id == "mw_evil" else None

    def startup(midway: Any) -> None:
        midway.services["audit"] = Audit()

    running = start_dashboard(("fake_audit", module_plugin("fake_audit", startup=startup)))
    page, problems = open_page(chromium, f"{running.url}/_midway/requests")
    page.wait_for_selector("#results table.requests a")
    assert EVIL in page.inner_text("#results")
    page.click("#results table.requests a")
    page.wait_for_selector("#answer")
    assert page.inner_text("#answer") == f"answer {EVIL}"
    assert f"<b>bold?</b> {EVIL}" in page.inner_text("#prompt")
    assert page.locator("img").count() == 0 and page.locator("main script").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.screenshot(path=screenshots / "core-only-request-record.png", full_page=True)
    assert problems == []
