"""Helpers for testing sign-in against a real OIDC provider (oidc-provider-mock: authlib's
server components behind Flask, on a thread) and for driving its login form in a browser.

Used by this package's tests and the project's Claude Code tests. The provider is a test
dependency (``midway-identity[test]``), imported lazily.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any


@contextmanager
def oidc_provider(people: Mapping[str, Mapping[str, Any]]) -> Iterator[str]:
    """A running OIDC provider knowing ``people`` (subject → claims: email, name, groups);
    yields its issuer URL (``http://localhost:<port>``)."""
    from oidc_provider_mock import User, run_server_in_thread

    users: Sequence[Any] = [User(sub=sub, claims=dict(claims)) for sub, claims in people.items()]
    with run_server_in_thread(port=0, user_claims=users) as server:
        yield f"http://localhost:{server.server_port}"


def confirm_in_browser(page: Any, verification_uri_complete: str, subject: str) -> str:
    """Drive a Playwright ``page`` through the browser leg: midway's device page (check the
    code, Continue), the provider's login form (sign in as ``subject``), back to midway's
    callback. Returns the text midway shows at the end."""
    page.goto(verification_uri_complete)
    page.click("#continue")
    page.fill("input[name=sub]", subject)
    page.click("button[type=submit]:has-text('Authorize')")
    page.wait_for_selector("#signed-in, #failure", timeout=15_000)
    return str(page.inner_text("main"))
