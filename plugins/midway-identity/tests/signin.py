"""A client that sends what Claude Code 2.1.331 sends when it signs in to a gateway (read
from its code: `/login` → gateway URL → metadata → device authorization → token polls), and
a browser stand-in (httpx) for the device page and the IdP's form. The real CLI and a real
browser are exercised in tests/claude_code and test_browser.py."""

from __future__ import annotations

import re
from typing import Any

import httpx
from oidc_provider_mock import User

from midway.exchange import Exchange
from midway.hookspecs import hookimpl

UA = {"User-Agent": "claude-code/2.1.331"}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
PEOPLE = [
    User(sub="alice", claims={"email": "alice@corp.example", "name": "Alice Liddell",
                              "groups": ["engineering", "midway-admins"]}),
    User(sub="ian", claims={"email": "ian@corp.example", "name": "Ian Intern",
                            "groups": ["interns"]}),
    User(sub="mallory", claims={"email": "mallory@elsewhere.example", "name": "Mallory",
                                "groups": []}),
]
GROUP_MODELS = {"engineering": ["claude-*"], "interns": ["claude-haiku-*", "claude-sonnet-*"]}
MODELS = [{"id": "claude-opus-4-1-20250805", "display_name": "Claude Opus 4.1"},
          {"id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5"},
          {"id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5"}]


class Seen:
    """Records who each finished request was (what the audit log would name)."""

    def __init__(self) -> None:
        self.principals: list[Any] = []

    @hookimpl
    def post_response(self, exchange: Exchange) -> None:
        self.principals.append(exchange.principal)


def identity_config(issuer: str, /, **extra: Any) -> dict[str, Any]:
    return {"issuer": extra.pop("issuer", issuer), "client_id": "midway-test",
            "client_secret": "s3cret-test",
            "poll_interval": 1, "group_models": GROUP_MODELS, "admin_groups": ["midway-admins"],
            "revocation_cache_seconds": 0, **extra}




class Client:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(timeout=10, follow_redirects=False, headers=UA)
        self.metadata = self.http.get(f"{base}/.well-known/oauth-authorization-server").json()

    def start(self) -> dict[str, Any]:
        resp = self.http.post(self.metadata["device_authorization_endpoint"],
                              data={"surface": "claude_code"})
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def poll(self, device_code: str) -> httpx.Response:
        return self.http.post(self.metadata["token_endpoint"],
                              data={"grant_type": DEVICE_GRANT, "device_code": device_code})

    def refresh(self, refresh_token: str) -> httpx.Response:
        return self.http.post(self.metadata["token_endpoint"],
                              data={"grant_type": "refresh_token",
                                    "refresh_token": refresh_token})


def browser_signin(verification_uri_complete: str, sub: str, deny: bool = False,
                   browser: httpx.Client | None = None) -> httpx.Response:
    """The browser leg without a browser: the device page, Continue, the IdP's form, the
    callback. Returns the callback's answer."""
    b = browser or httpx.Client(timeout=10, follow_redirects=False)
    page = b.get(verification_uri_complete)
    assert page.status_code == 200, page.text
    code = re.search(r"id=user-code>([^<]+)<", page.text)
    assert code is not None
    base = verification_uri_complete.split("/device")[0]
    to_idp = b.post(f"{base}/device", data={"user_code": code.group(1)})
    assert to_idp.status_code == 302, to_idp.text
    authorize = to_idp.headers["location"]
    form = b.get(authorize)
    assert form.status_code == 200, form.text
    if deny:  # what a conforming IdP sends back when the person refuses (RFC 6749 4.1.2.1);
        # the mock IdP's own deny button drops the state
        from urllib.parse import parse_qs, urlsplit
        query = parse_qs(urlsplit(authorize).query)
        return b.get(f"{query['redirect_uri'][0]}?error=access_denied"
                     f"&state={query['state'][0]}")
    answer = b.post(authorize, data={"sub": sub})
    assert answer.status_code in (302, 303), answer.text
    return b.get(answer.headers["location"])


def sign_in(base: str, sub: str) -> dict[str, Any]:
    client = Client(base)
    device = client.start()
    browser_signin(device["verification_uri_complete"], sub)
    resp = client.poll(device["device_code"])
    assert resp.status_code == 200, resp.text
    return dict(resp.json())
