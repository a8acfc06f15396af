"""Sign-in through the company IdP in chromium (Playwright): the device page, the IdP's login
form and the callback for Claude Code's /login; and the dashboard's sign-in for admin groups
(midway-identity with midway-dashboard)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import midway_dashboard
import midway_identity
from midway.testing import RunningMidway
from midway_dashboard.testing import browser
from midway_identity.testing import confirm_in_browser, oidc_provider

PEOPLE = {"alice": {"email": "alice@corp.example", "name": "Alice",
                    "groups": ["engineering", "midway-admins"]},
          "ian": {"email": "ian@corp.example", "name": "Ian", "groups": ["interns"]}}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as instance:
        yield instance


@pytest.fixture(scope="module")
def idp() -> Iterator[str]:
    with oidc_provider(PEOPLE) as issuer:
        yield issuer


@pytest.fixture
def gateway(midway_factory: Callable[..., RunningMidway], idp: str,
            monkeypatch: pytest.MonkeyPatch) -> RunningMidway:
    monkeypatch.setenv("MIDWAY_TEST_ADMIN_KEY", "adm-identity-test-0123456789")
    config = {"identity": {"issuer": idp, "client_id": "midway-browser",
                           "client_secret": "browser-secret", "poll_interval": 1,
                           "admin_groups": ["midway-admins"]}}
    return midway_factory(plugins=[("identity", midway_identity),
                                   ("dashboard", midway_dashboard)],
                          config=config, upstream_api_key="sk-ant-upstream-test",
                          admin_key="env:MIDWAY_TEST_ADMIN_KEY")


def test_device_confirmed_in_chromium(gateway: RunningMidway, chromium: Any) -> None:
    device = httpx.post(f"{gateway.url}/oauth/device_authorization",
                        data={"surface": "claude_code"}, timeout=10).json()
    page = chromium.new_page()
    shown = confirm_in_browser(page, device["verification_uri_complete"], "alice")
    page.close()
    assert "Signed in as alice@corp.example" in shown
    tokens = httpx.post(f"{gateway.url}/oauth/token", timeout=10,
                        data={"grant_type": DEVICE_GRANT, "device_code": device["device_code"]})
    assert tokens.status_code == 200 and tokens.json()["email"] == "alice@corp.example"


def test_dashboard_sign_in_for_admin_groups(gateway: RunningMidway, chromium: Any) -> None:
    context = chromium.new_context()
    page = context.new_page()
    page.goto(f"{gateway.url}/_midway/")
    assert page.locator("#sign-in").count() == 1  # the login page offers the IdP
    page.click("#sign-in")
    page.fill("input[name=sub]", "alice")  # in midway-admins
    page.click("button[type=submit]:has-text('Authorize')")
    page.wait_for_url(f"{gateway.url}/_midway/")
    assert page.locator("body[data-page=login]").count() == 0
    assert page.request.get(f"{gateway.url}/_midway/api/status").status == 200
    context.close()
    # an intern is not let in
    context = chromium.new_context()
    page = context.new_page()
    page.goto(f"{gateway.url}/_midway/identity/login")
    page.fill("input[name=sub]", "ian")
    page.click("button[type=submit]:has-text('Authorize')")
    page.wait_for_selector("#failure")
    assert "not in a group" in page.inner_text("#failure")
    assert page.request.get(f"{gateway.url}/_midway/api/status").status == 401
    context.close()
    # the admin key still works for automation
    assert httpx.get(f"{gateway.url}/_midway/api/status", timeout=10, headers={
        "authorization": "Bearer adm-identity-test-0123456789"}).status_code == 200
