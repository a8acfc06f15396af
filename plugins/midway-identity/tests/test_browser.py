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
