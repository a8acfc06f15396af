"""Claude Code's gateway sign-in against midway and a real OIDC provider: the device flow,
tokens, refresh rotation and reuse, deprovisioning, revocation, managed settings, and the
per-group model allowlists on every door."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import pytest
from click.testing import CliRunner
from signin import UA, Client, Seen, browser_signin, sign_in

from midway.cli import cli
from midway.testing import RunningMidway, wait_for
from midway_identity import IDENTITY, settings_checksum

Start = Callable[..., RunningMidway]


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "anthropic-version": "2023-06-01"}


def message(model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def test_device_flow_signs_a_person_in_and_names_them(gateway: Start, seen: Seen) -> None:
    gw = gateway()
    client = Client(gw.url)
    meta = client.metadata
    assert meta["device_authorization_endpoint"] == f"{gw.url}/oauth/device_authorization"
    assert meta["token_endpoint"] == f"{gw.url}/oauth/token"
    assert "authorization_endpoint" not in meta
    device = client.start()
    assert device["verification_uri_complete"] == \
        f"{gw.url}/device?user_code={device['user_code']}"
    assert len(device["device_code"]) >= 43  # >= 256 bits
    assert client.poll(device["device_code"]).json() == {"error": "authorization_pending"}

    done = browser_signin(device["verification_uri_complete"], "alice")
    assert done.status_code == 200 and "alice@corp.example" in done.text

    tokens = client.poll(device["device_code"])
    assert tokens.status_code == 200
    body = tokens.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["email"] == "alice@corp.example" and body["refresh_token"]
    # the device code is single-use
    assert client.poll(device["device_code"]).json()["error"] == "invalid_grant"

    sdk = anthropic.Anthropic(base_url=gw.url, auth_token=body["access_token"], api_key=None,
                              max_retries=0)
    reply = sdk.messages.create(**message("claude-opus-4-1-20250805"))
    assert reply.content
    wait_for(lambda: len(seen.principals) >= 1)  # post_response runs after the answer
    who = seen.principals[-1]
    assert who.kind == "oidc" and who.email == "alice@corp.example"
    assert who.subject == "alice" and who.name == "Alice Liddell"
    assert set(who.groups) == {"engineering", "midway-admins"}
    assert who.as_dict()["email"] == "alice@corp.example"
    # the same person gets the same id on every sign-in
    again = sign_in(gw.url, "alice")
    sdk2 = anthropic.Anthropic(base_url=gw.url, auth_token=again["access_token"], api_key=None)
    sdk2.messages.create(**message("claude-haiku-4-5-20251001"))
    wait_for(lambda: len(seen.principals) >= 2)
    assert seen.principals[-1].id == who.id


def test_the_token_never_reaches_the_upstream(gateway: Start, fake_upstream: Any) -> None:
    gw = gateway()
    tokens = sign_in(gw.url, "alice")
    httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
               headers=bearer(tokens["access_token"]), timeout=10).raise_for_status()
    headers = fake_upstream.messages_requests[-1].headers
    assert tokens["access_token"] not in str(dict(headers))
    assert headers.get("x-api-key") == "sk-ant-upstream-test"


def test_polling_errors_follow_rfc_8628(gateway: Start) -> None:
    gw = gateway({"poll_interval": 5, "device_code_seconds": 1})
    client = Client(gw.url)
    device = client.start()
    assert device["interval"] == 5
    assert client.poll(device["device_code"]).json()["error"] == "authorization_pending"
    fast = client.poll(device["device_code"])
    assert fast.status_code == 429 and fast.json()["error"] == "slow_down"
    assert client.poll("not-a-code").json()["error"] == "invalid_grant"
    deadline = time.time() + 1.5
    while time.time() < deadline:  # the code's lifetime (1 s) passing, not synchronisation
        time.sleep(0.1)
    assert client.poll(device["device_code"]).json()["error"] == "expired_token"


def test_denied_at_the_idp_is_access_denied(gateway: Start) -> None:
    gw = gateway()
    client = Client(gw.url)
    device = client.start()
    page = browser_signin(device["verification_uri_complete"], "alice", deny=True)
    assert page.status_code == 403
    assert client.poll(device["device_code"]).json()["error"] == "access_denied"


def test_callback_in_another_browser_is_refused(gateway: Start, idp: str) -> None:
    gw = gateway()
    client = Client(gw.url)
    device = client.start()
    victim = httpx.Client(timeout=10)
    page = victim.get(device["verification_uri_complete"])
    assert page.status_code == 200
    to_idp = victim.post(f"{gw.url}/device", data={"user_code": device["user_code"]})
    authorize = to_idp.headers["location"]
    answer = victim.post(authorize, data={"sub": "alice"})
    # an attacker who obtains the callback URL cannot complete it in their own browser
    stolen = httpx.get(answer.headers["location"], timeout=10)
    assert stolen.status_code == 403
    assert client.poll(device["device_code"]).json()["error"] == "authorization_pending"


def test_cross_site_post_to_the_device_page_is_refused(gateway: Start) -> None:
    gw = gateway()
    device = Client(gw.url).start()
    resp = httpx.post(f"{gw.url}/device", data={"user_code": device["user_code"]},
                      headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"})
    assert resp.status_code == 403


@pytest.mark.parametrize("origin, refused", [
    ("{loopback}", False),  # the page as this browser loaded it, on the loopback address
    ("https://midway.example", False),  # the page through public_url
    ("https://evil.example", True),
    ("null", True),
])
def test_an_origin_without_sec_fetch_site_is_this_gateway_or_refused(
        gateway: Start, origin: str, refused: bool) -> None:
    """Browsers too old for Sec-Fetch-Site send only Origin: it is the gateway's when it is
    the name the request came to (loopback here) or public_url's, even with public_url set."""
    gw = gateway({"public_url": "https://midway.example"})
    start = httpx.post(f"{gw.url}/oauth/device_authorization", data={"surface": "claude_code"},
                       headers=UA)
    assert start.status_code == 200, start.text
    resp = httpx.post(f"{gw.url}/device", data={"user_code": start.json()["user_code"]},
                      headers={"origin": origin.format(loopback=gw.url)})
    assert (resp.status_code == 403) is refused, resp.text
    if not refused:
        assert resp.status_code in (302, 303) and resp.headers["location"].startswith("http")


def test_unknown_code_and_the_page_never_submits_itself(gateway: Start) -> None:
    gw = gateway()
    resp = httpx.get(f"{gw.url}/device?user_code=BBBB-CCCC")
    assert resp.status_code == 400 and "not recognised" in resp.text
    device = Client(gw.url).start()
    page = httpx.get(device["verification_uri_complete"])
    assert "<script" not in page.text and device["user_code"] in page.text


def test_group_allowlists_on_every_door(gateway: Start) -> None:
    gw = gateway()
    ian = bearer(sign_in(gw.url, "ian")["access_token"])
    opus = "claude-opus-4-1-20250805"
    ok = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                    headers=ian, timeout=10)
    assert ok.status_code == 200
    doors = [
        ("/v1/messages", message(opus)),
        ("/v1/messages?beta=true", message(opus)),
        ("/v1/messages/count_tokens", {"model": opus, "messages": message(opus)["messages"]}),
        ("/v1/messages/batches", {"requests": [
            {"custom_id": "a", "params": message("claude-haiku-4-5-20251001")},
            {"custom_id": "b", "params": message(opus)}]}),
        (f"/model/{opus}/invoke", {"anthropic_version": "bedrock-2023-05-31",
                                  "max_tokens": 16, "messages": message(opus)["messages"]}),
        (f"/model/us.anthropic.{opus}-v1:0/invoke-with-response-stream",
         {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 16,
          "messages": message(opus)["messages"]}),
        ("/v1/projects/p/locations/us-east5/publishers/anthropic/models/"
         "claude-opus-4-1@20250805:rawPredict",
         {"anthropic_version": "vertex-2023-10-16", "max_tokens": 16,
          "messages": message(opus)["messages"]}),
    ]
    for path, body in doors:
        resp = httpx.post(f"{gw.url}{path}", json=body, headers=ian, timeout=10)
        assert resp.status_code == 403, (path, resp.status_code, resp.text)
        assert resp.json()["error"]["type"] == "permission_error", path
    listed = httpx.get(f"{gw.url}/v1/models?limit=1000", headers=ian, timeout=10).json()
    assert [m["id"] for m in listed["data"]] == ["claude-sonnet-4-5-20250929",
                                                 "claude-haiku-4-5-20251001"] or \
        sorted(m["id"] for m in listed["data"]) == ["claude-haiku-4-5-20251001",
                                                    "claude-sonnet-4-5-20250929"]
    alice = bearer(sign_in(gw.url, "alice")["access_token"])
    every = httpx.get(f"{gw.url}/v1/models?limit=1000", headers=alice, timeout=10).json()
    assert len(every["data"]) == 3
    # a person in no listed group gets default_models: none here
    mallory = bearer(sign_in(gw.url, "mallory")["access_token"])
    refused = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                         headers=mallory, timeout=10)
    assert refused.status_code == 403
    assert httpx.get(f"{gw.url}/v1/models", headers=mallory, timeout=10).json()["data"] == []


@pytest.mark.parametrize("token", [
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA",  # not ours
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.",  # alg none
])
def test_forged_tokens_are_refused(gateway: Start, token: str) -> None:
    gw = gateway()
    resp = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                      headers=bearer(token), timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"


def test_a_token_signed_by_another_install_or_expired_is_refused(gateway: Start) -> None:
    from joserfc.jwk import OctKey

    from midway_identity.tokens import Minter

    gw = gateway()
    identity = gw.midway.services.get(IDENTITY)
    assert identity is not None
    tokens = sign_in(gw.url, "alice")
    claims = identity.minter.verify(tokens["access_token"])
    other = Minter(OctKey.generate_key(256), identity.minter.issuer, 3600)
    forged, _ = other.mint(claims["jti"], claims["sub"], None, ("engineering",))
    resp = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                      headers=bearer(forged), timeout=10)
    assert resp.status_code == 401
    expired_minter = Minter(identity.minter.key, identity.minter.issuer, -120)
    expired, _ = expired_minter.mint(claims["jti"], claims["sub"], None, ())
    resp = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                      headers=bearer(expired), timeout=10)
    assert resp.status_code == 401 and resp.headers["x-should-retry"] == "false"
    assert "expired" in resp.json()["error"]["message"]


def test_refresh_rotates_and_reuse_revokes_the_session(gateway: Start) -> None:
    gw = gateway()
    client = Client(gw.url)
    first = sign_in(gw.url, "alice")
    second = client.refresh(first["refresh_token"])
    assert second.status_code == 200, second.text
    fresh = second.json()
    assert fresh["refresh_token"] != first["refresh_token"]
    ok = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                    headers=bearer(fresh["access_token"]), timeout=10)
    assert ok.status_code == 200
    # the spent refresh token presented again at once: two refreshes of one client crossed
    crossed = client.refresh(first["refresh_token"])
    assert crossed.status_code == 200
    # presented again later: someone holds a copy; the session ends
    identity = gw.midway.services.get(IDENTITY)
    assert identity is not None  # a minute passes for every spent token:
    gw.call(identity.store.db.execute("UPDATE midway_identity_refresh "
                                      "SET used_at = used_at - 60 WHERE used_at IS NOT NULL"))
    reused = client.refresh(first["refresh_token"])
    assert reused.status_code == 401 and reused.json()["error"] == "invalid_grant"
    assert client.refresh(fresh["refresh_token"]).status_code == 401
    gone = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                      headers=bearer(fresh["access_token"]), timeout=10)
    assert gone.status_code == 401 and gone.headers["x-should-retry"] == "false"


def test_removed_at_the_idp_cannot_refresh(gateway: Start, idp: str) -> None:
    gw = gateway()
    tokens = sign_in(gw.url, "ian")
    identity = gw.midway.services.get(IDENTITY)
    assert identity is not None
    (session,) = gw.call(identity.store.sessions("ian"))
    held = session.idp_refresh  # the IdP's refresh token, sealed at rest (JWE)
    assert held is not None and held.count(".") == 4 and identity.sealer.open(held)
    httpx.post(f"{idp}/users/ian/revoke-tokens", timeout=10).raise_for_status()
    resp = Client(gw.url).refresh(tokens["refresh_token"])
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_grant"
    # and the access token they still hold stops at once too (the session is revoked)
    gone = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                      headers=bearer(tokens["access_token"]), timeout=10)
    assert gone.status_code == 401


def test_sign_out_revokes(gateway: Start) -> None:
    gw = gateway()
    tokens = sign_in(gw.url, "alice")
    client = Client(gw.url)
    assert client.metadata["revocation_endpoint"] == f"{gw.url}/oauth/revoke"
    assert client.http.post(client.metadata["revocation_endpoint"],
                            data={"token": tokens["access_token"]}).status_code == 200
    gone = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                      headers=bearer(tokens["access_token"]), timeout=10)
    assert gone.status_code == 401
    assert client.refresh(tokens["refresh_token"]).status_code == 401


def test_sessions_commands_list_and_revoke(gateway: Start, tmp_path: Any) -> None:
    gw = gateway()
    a1 = sign_in(gw.url, "alice")
    a2 = sign_in(gw.url, "alice")
    ian = sign_in(gw.url, "ian")
    data_dir = str(gw.midway.settings.data_dir)
    config = tmp_path / "midway.toml"
    identity = gw.midway.settings.tables["identity"]
    config.write_text(f'[identity]\nissuer = "{identity["issuer"]}"\n'
                      f'client_id = "{identity["client_id"]}"\n')
    runner = CliRunner()
    listed = runner.invoke(cli, ["sessions", "list", "--json", "--config", str(config),
                                 "--data-dir", data_dir])
    assert listed.exit_code == 0, listed.output
    assert sorted(r["email"] for r in __import__("json").loads(listed.output)) == \
        ["alice@corp.example", "alice@corp.example", "ian@corp.example"]
    revoked = runner.invoke(cli, ["sessions", "revoke", "alice@corp.example", "--config",
                                  str(config), "--data-dir", data_dir])
    assert revoked.exit_code == 0 and "revoked 2 session(s)" in revoked.output
    for tokens in (a1, a2):
        resp = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                          headers=bearer(tokens["access_token"]), timeout=10)
        assert resp.status_code == 401
        assert Client(gw.url).refresh(tokens["refresh_token"]).status_code == 401
    still = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                       headers=bearer(ian["access_token"]), timeout=10)
    assert still.status_code == 200


def test_managed_settings_with_etag(gateway: Start) -> None:
    settings = {"env": {"CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY": "1"},
                "permissions": {"deny": ["Bash(rm -rf *)"]}, "model": "claude-sonnet-4-5"}
    gw = gateway({"managed_settings": settings})
    token = sign_in(gw.url, "alice")["access_token"]
    resp = httpx.get(f"{gw.url}/managed/settings", headers=bearer(token), timeout=10)
    assert resp.status_code == 200
    body = resp.json()
    assert body["settings"] == settings and body["uuid"]
    assert body["checksum"] == settings_checksum(settings)
    import hashlib
    import json
    expected = hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":"))
                              .encode()).hexdigest()
    assert body["checksum"] == f"sha256:{expected}"
    assert resp.headers["etag"] == f'"{body["checksum"]}"'
    same = httpx.get(f"{gw.url}/managed/settings", timeout=10,
                     headers={**bearer(token), "if-none-match": f'"{body["checksum"]}"'})
    assert same.status_code == 304
    star = httpx.get(f"{gw.url}/managed/settings", timeout=10,
                     headers={**bearer(token), "if-none-match": "*"})
    assert star.status_code == 200
    assert httpx.get(f"{gw.url}/managed/settings", timeout=10).status_code == 401
    plain = gateway()
    token2 = sign_in(plain.url, "alice")["access_token"]
    assert httpx.get(f"{plain.url}/managed/settings", headers=bearer(token2),
                     timeout=10).status_code == 404


def test_protocol_is_served(gateway: Start) -> None:
    gw = gateway()
    resp = httpx.get(f"{gw.url}/protocol", timeout=10)
    assert resp.status_code == 200 and "text/markdown" in resp.headers["content-type"]
    assert f"{gw.url}/oauth/device_authorization" in resp.text


def test_api_keys_keep_working_beside_sign_in(gateway: Start, seen: Seen) -> None:
    gw = gateway(client_keys=[{"key": "mw-ci-robot-key-000001", "name": "ci"}])
    resp = httpx.post(f"{gw.url}/v1/messages", json=message("claude-opus-4-1-20250805"),
                      headers={"x-api-key": "mw-ci-robot-key-000001",
                               "anthropic-version": "2023-06-01"}, timeout=10)
    assert resp.status_code == 200
    wait_for(lambda: len(seen.principals) >= 1)  # post_response runs after the answer
    assert seen.principals[-1].kind == "key" and seen.principals[-1].name == "ci"
    nothing = httpx.post(f"{gw.url}/v1/messages", json=message("claude-opus-4-1-20250805"),
                         headers={"anthropic-version": "2023-06-01"}, timeout=10)
    assert nothing.status_code == 401


def test_email_domain_allowlist(gateway: Start) -> None:
    gw = gateway({"allowed_email_domains": ["corp.example"]})
    client = Client(gw.url)
    device = client.start()
    page = browser_signin(device["verification_uri_complete"], "mallory")
    assert page.status_code == 403
    assert client.poll(device["device_code"]).json()["error"] == "access_denied"


def test_guessing_codes_and_flooding_sign_ins_are_limited(gateway: Start) -> None:
    gw = gateway()
    with httpx.Client(timeout=10) as http:
        answers = [http.get(f"{gw.url}/device?user_code=BCDF-GHJ{c}").status_code
                   for c in "KLMNPQRSTV" * 7]
        assert 400 in answers and answers[-1] == 429  # 60 guesses per 5 minutes, then no
        starts = [http.post(f"{gw.url}/oauth/device_authorization",
                            data={"surface": "claude_code"}) for _ in range(31)]
        assert all(r.status_code == 200 for r in starts[:30])
        assert starts[30].status_code == 429 and starts[30].json()["error"] == "slow_down"


def test_oversized_or_odd_forms_are_refused(gateway: Start) -> None:
    gw = gateway()
    big = httpx.post(f"{gw.url}/oauth/token", content=b"grant_type=" + b"x" * 20000,
                     headers={"content-type": "application/x-www-form-urlencoded"}, timeout=10)
    assert big.status_code == 413
    odd = httpx.post(f"{gw.url}/oauth/token", data={"grant_type": "password"}, timeout=10)
    assert odd.status_code == 400 and odd.json()["error"] == "unsupported_grant_type"
    missing = httpx.post(f"{gw.url}/oauth/token",
                         data={"grant_type": "urn:ietf:params:oauth:grant-type:device_code"},
                         timeout=10)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    # a refresh token that never existed
    assert Client(gw.url).refresh("made-up").status_code == 401


def test_a_forged_authorization_code_signs_nobody_in(gateway: Start) -> None:
    from urllib.parse import parse_qs, urlsplit

    gw = gateway()
    client = Client(gw.url)
    device = client.start()
    b = httpx.Client(timeout=10)
    b.get(device["verification_uri_complete"])
    to_idp = b.post(f"{gw.url}/device", data={"user_code": device["user_code"]})
    query = parse_qs(urlsplit(to_idp.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"][0]
    forged = b.get(f"{gw.url}/oauth/callback?code=forged-code&state={query['state'][0]}")
    assert forged.status_code == 502 and "could not be completed" in forged.text
    assert client.poll(device["device_code"]).json()["error"] == "access_denied"
    # the state is spent: replaying the callback does nothing
    again = b.get(f"{gw.url}/oauth/callback?code=other&state={query['state'][0]}")
    assert again.status_code == 400


def test_groups_claim_shapes() -> None:
    from midway_identity.service import _groups

    assert _groups({"groups": ["a", "b", "a", 3, ""]}, "groups") == ("a", "b")
    assert _groups({"groups": "solo"}, "groups") == ("solo",)
    assert _groups({"realm_access": {"roles": ["dev"]}}, "realm_access.roles") == ("dev",)
    assert _groups({"groups": {"not": "a list"}}, "groups") == ()
    assert _groups({}, "groups") == ()


def test_sign_in_beside_the_key_store(midway_factory: Any, idp: str) -> None:
    """With ``[keys] enabled`` (issued keys) too, both kinds of credential are accepted."""
    from signin import MODELS, identity_config

    import midway_identity

    gw = midway_factory(plugins=[("identity", midway_identity)],
                        config={"identity": identity_config(idp), "keys": {"enabled": True},
                                "models": {"list": MODELS}},
                        upstream_api_key="sk-ant-upstream-test")
    tokens = sign_in(gw.url, "alice")
    ok = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                    headers=bearer(tokens["access_token"]), timeout=10)
    assert ok.status_code == 200, ok.text
    unknown = httpx.post(f"{gw.url}/v1/messages", json=message("claude-haiku-4-5-20251001"),
                         headers={"x-api-key": "mw-not-a-real-key-000000000000",
                                  "anthropic-version": "2023-06-01"}, timeout=10)
    assert unknown.status_code == 401


# Every route of the plugin: (method, path).
ROUTES = [("GET", "/.well-known/oauth-authorization-server"), ("GET", "/protocol"),
          ("POST", "/oauth/device_authorization"), ("POST", "/oauth/token"),
          ("POST", "/oauth/revoke"), ("GET", "/device"), ("POST", "/device"),
          ("GET", "/oauth/callback"), ("GET", "/managed/settings"),
          ("GET", "/_midway/identity/login")]


@pytest.mark.parametrize("fetch_site", ["same-origin", None], ids=["browser", "older-browser"])
@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_rebound_name_reaches_no_route(gateway: Start, method: str, path: str,
                                         fetch_site: str | None) -> None:
    """DNS rebinding: a page at rebound.example, its name now resolving to 127.0.0.1, is
    same-origin with what it reaches there — it could start a sign-in, read its codes and
    poll for the tokens of whoever completes it. A loopback gateway answers only names of its
    own (older browsers send no Sec-Fetch-Site: their Origin matches the Host)."""
    gw = gateway()
    port = gw.url.rsplit(":", 1)[1]
    page = {"host": f"rebound.example:{port}", "origin": f"http://rebound.example:{port}"}
    if fetch_site is not None:
        page["sec-fetch-site"] = fetch_site
    resp = httpx.request(method, f"{gw.url}{path}", headers=page, data={"surface": "x"},
                         timeout=10)
    assert resp.status_code == 403, resp.text
    assert "rebound.example" in resp.text and "allowed_hosts" in resp.text
    assert "user_code" not in resp.text and "issuer" not in resp.text


def test_the_names_of_the_gateway_are_answered(gateway: Start) -> None:
    """Loopback names, ``[midway] allowed_hosts`` and public_url's host sign people in; the
    links they are given use public_url when it is set, else the name they used."""
    gw = gateway(allowed_hosts=["gw.corp.example"])
    port = gw.url.rsplit(":", 1)[1]
    for name in ("localhost", "127.0.0.1", "gw.corp.example"):
        resp = httpx.post(f"{gw.url}/oauth/device_authorization", data={"surface": "x"},
                          headers={"host": f"{name}:{port}"}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.json()["verification_uri"] == f"http://{name}:{port}/device"
    public = gateway(identity={"public_url": "https://midway.corp.example"})
    for name in ("midway.corp.example", f"localhost:{public.url.rsplit(':', 1)[1]}"):
        resp = httpx.post(f"{public.url}/oauth/device_authorization", data={"surface": "x"},
                          headers={"host": name}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.json()["verification_uri"] == "https://midway.corp.example/device"
    other = httpx.post(f"{public.url}/oauth/device_authorization", data={"surface": "x"},
                       headers={"host": "gw.corp.example"}, timeout=10)
    assert other.status_code == 403
