"""Several instances on one PostgreSQL store, and what start-up says about bad IdP
configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from signin import Client, browser_signin

from midway.cli import cli
from midway.config import ConfigError
from midway.options import load_table
from midway.testing import RunningMidway, start_midway
from midway_identity import IDENTITY, IdentityConfig

Start = Callable[..., RunningMidway]
KEY = "shared-signing-key-for-both-instances-0123456789"


def message() -> dict[str, Any]:
    return {"model": "claude-haiku-4-5-20251001", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}


def test_two_instances_share_sign_ins_and_revocation(gateway: Start, postgres_dsn: str,
                                                     pg_schema: str, tmp_path: Path) -> None:
    shared = {"store": postgres_dsn, "schema": pg_schema, "signing_key": KEY}
    one, two = gateway(shared), gateway(shared)
    client = Client(one.url)
    device = client.start()
    # the browser reaches the other instance (a load balancer's choice)
    other = device["verification_uri_complete"].replace(one.url, two.url)
    assert browser_signin(other, "alice").status_code == 200
    tokens = client.poll(device["device_code"])
    assert tokens.status_code == 200, tokens.text
    access = tokens.json()["access_token"]
    for gw in (one, two):
        resp = httpx.post(f"{gw.url}/v1/messages", json=message(), timeout=10,
                          headers={"authorization": f"Bearer {access}",
                                   "anthropic-version": "2023-06-01"})
        assert resp.status_code == 200, resp.text
    # refresh on one, the old refresh token replayed on the other a minute later: reuse,
    # revoked everywhere
    fresh = client.refresh(tokens.json()["refresh_token"]).json()
    identity = one.midway.services.get(IDENTITY)
    assert identity is not None
    one.call(identity.store.db.execute("UPDATE midway_identity_refresh "
                                       "SET used_at = used_at - 60 WHERE used_at IS NOT NULL"))
    assert Client(two.url).refresh(tokens.json()["refresh_token"]).status_code == 401
    for gw in (one, two):
        resp = httpx.post(f"{gw.url}/v1/messages", json=message(), timeout=10,
                          headers={"authorization": f"Bearer {fresh['access_token']}",
                                   "anthropic-version": "2023-06-01"})
        assert resp.status_code == 401
    # sign in again, then an administrator revokes with the command line
    again = Client(two.url)
    device = again.start()
    browser_signin(device["verification_uri_complete"], "alice")
    access = again.poll(device["device_code"]).json()["access_token"]
    config = tmp_path / "midway.toml"
    issuer = one.midway.settings.tables["identity"]["issuer"]
    config.write_text(f'[identity]\nissuer = "{issuer}"\nclient_id = "midway-test"\n'
                      f'store = "{postgres_dsn}"\nschema = "{pg_schema}"\n')
    out = CliRunner().invoke(cli, ["sessions", "revoke", "alice", "--config", str(config)])
    assert out.exit_code == 0 and "revoked 1 session(s)" in out.output, out.output
    for gw in (one, two):
        resp = httpx.post(f"{gw.url}/v1/messages", json=message(), timeout=10,
                          headers={"authorization": f"Bearer {access}",
                                   "anthropic-version": "2023-06-01"})
        assert resp.status_code == 401 and resp.headers["x-should-retry"] == "false"
    listed = CliRunner().invoke(cli, ["sessions", "list", "--all", "--config", str(config)])
    assert listed.exit_code == 0 and "revoked" in listed.output


@pytest.mark.parametrize("table, expected", [
    ({"issuer": "https://idp.example.com"}, "[identity] client_id: required"),
    ({"issuer": "idp.example.com", "client_id": "x"}, "[identity] issuer: expected an http"),
    ({"issuer": "https://idp.example.com", "client_id": "x", "signing_key": "short"},
     "signing_key must be at least 32"),
    ({"issuer": "https://idp.example.com", "client_id": "x", "group_models": {"a": 3}},
     "[identity] group_models: group 'a'"),
    ({"isuer": "https://idp.example.com"}, "did you mean `issuer`"),
])
def test_bad_config_is_one_line(table: dict[str, Any], expected: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_table(IdentityConfig, "identity", table, data_dir=tmp_path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_bad_config_stops_start_up(fake_upstream: Any, tmp_path: Path) -> None:
    import midway_identity

    with pytest.raises(ConfigError, match=r"\[identity\] client_id"):
        start_midway(tmp_path / "m", fake_upstream.url, [("identity", midway_identity)],
                     {"identity": {"issuer": "https://idp.example.com"}})


def test_an_issuer_that_names_another_refuses_to_start(fake_upstream: Any,
                                                       tmp_path: Path) -> None:
    """A discovery document for another issuer (a typo'd tenant, a proxy in between): one
    line at start-up, not a sign-in failing later."""
    from aiohttp import web

    import midway_identity
    from midway.testing import ServerThread

    async def document(request: web.Request) -> web.Response:
        return web.json_response({"issuer": "https://login.example.com/other-tenant",
                                  "authorization_endpoint": "https://x/a",
                                  "token_endpoint": "https://x/t", "jwks_uri": "https://x/j"})

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", document)
    server = ServerThread(app).start()
    try:
        with pytest.raises(ConfigError, match="names issuer"):
            start_midway(tmp_path / "m", fake_upstream.url, [("identity", midway_identity)],
                         {"identity": {"issuer": server.url, "client_id": "x"}})
    finally:
        server.stop()


def test_an_unreachable_idp_is_a_readiness_failure(gateway: Start, tmp_path: Path) -> None:
    from midway.testing_services import free_port

    gw = gateway({"issuer": f"http://127.0.0.1:{free_port()}"})  # starts: no crash loop
    ready = httpx.get(f"{gw.url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert any("identity provider unreachable" in p for p in ready.json()["problems"])
    device = Client(gw.url).start()  # the device flow starts; the browser leg says why not
    page = httpx.get(device["verification_uri_complete"], timeout=10)
    resp = httpx.post(f"{gw.url}/device", data={"user_code": device["user_code"]}, timeout=10)
    assert page.status_code == 200 and resp.status_code == 503
    assert "cannot be reached" in resp.text


def test_installed_but_unconfigured_changes_nothing(midway_factory: Callable[..., Any],
                                                    fake_upstream: Any) -> None:
    import midway_identity

    gw = midway_factory(plugins=[("identity", midway_identity)])
    assert httpx.get(f"{gw.url}/.well-known/oauth-authorization-server",
                     timeout=10).status_code == 404
    resp = httpx.post(f"{gw.url}/v1/messages", json=message(), timeout=10,
                      headers={"x-api-key": "sk-ant-client-own", "anthropic-version": "2023-06-01"})
    assert resp.status_code == 200  # pass-through as before


def test_config_check_asks_the_idp(idp: str, tmp_path: Path) -> None:
    from midway.testing_services import free_port

    good = tmp_path / "good.toml"
    good.write_text(f'[midway]\nplugins = ["identity"]\n[identity]\nissuer = "{idp}"\n'
                    'client_id = "x"\n')
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade", "--config", str(good), "--data-dir",
                               str(tmp_path / "d")]).exit_code == 0
    ok = runner.invoke(cli, ["config", "check", "--config", str(good), "--data-dir",
                             str(tmp_path / "d")])
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[midway]\nplugins = ["identity"]\n[identity]\n'
                   f'issuer = "http://127.0.0.1:{free_port()}"\nclient_id = "x"\n')
    out = runner.invoke(cli, ["config", "check", "--config", str(bad), "--data-dir",
                              str(tmp_path / "d")])
    assert out.exit_code != 0 and "[identity] issuer:" in out.output, out.output
