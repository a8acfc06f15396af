"""The browser leg in chromium (Playwright): midway's device page, the IdP's login form, the
callback; and the dashboard's sign-in through the same IdP for admin groups."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from signin import Client

from midway.testing import RunningMidway
from midway_dashboard.testing import browser
from midway_identity.testing import confirm_in_browser

Start = Callable[..., RunningMidway]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser() as instance:
        yield instance


def test_device_confirmed_in_chromium(gateway: Start, chromium: Any) -> None:
    gw = gateway()
    client = Client(gw.url)
    device = client.start()
    page = chromium.new_page()
    try:
        shown = confirm_in_browser(page, device["verification_uri_complete"], "alice")
    except Exception:
        print(page.url, page.content()[:3000])
        raise
    assert "Signed in as alice@corp.example" in shown
    tokens = client.poll(device["device_code"])
    assert tokens.status_code == 200 and tokens.json()["email"] == "alice@corp.example"


def test_dashboard_sign_in_for_admin_groups(dashboard_gateway: RunningMidway,
                                            chromium: Any) -> None:
    gw = dashboard_gateway
    page = chromium.new_page()
    page.goto(f"{gw.url}/_midway/")
    assert page.locator("#sign-in").count() == 1  # the login page offers the IdP
    page.click("#sign-in")
    page.fill("input[name=sub]", "alice")  # in midway-admins
    page.click("button[type=submit]:has-text('Authorize')")
    page.wait_for_url(f"{gw.url}/_midway/")
    assert page.locator("body[data-page=login]").count() == 0
    status = page.request.get(f"{gw.url}/_midway/api/status")
    assert status.status == 200
    page.close()
    # an intern is not let in
    other = chromium.new_context()
    page = other.new_page()
    page.goto(f"{gw.url}/_midway/identity/login")
    page.fill("input[name=sub]", "ian")
    page.click("button[type=submit]:has-text('Authorize')")
    page.wait_for_selector("#failure")
    assert "not in a group" in page.inner_text("#failure")
    assert page.request.get(f"{gw.url}/_midway/api/status").status == 401
    other.close()
