# ruff: noqa: F811 - pytest fixtures imported from keys_support
"""Key lifecycle through ``midway keys ...`` against a running proxy, on SQLite and PostgreSQL."""

import sqlite3
import time

import anthropic
import pytest
from keys_support import (  # noqa: F401 - fixtures
    ask,
    keys_config,
    run_cli,
    run_cli_failing,
    write_config,
)

from midway import Upstream, hookimpl
from midway.testing import pg_query, wait_for


def refused(url, key):
    try:
        ask(url, key)
    except anthropic.AuthenticationError:
        return True
    return False


def stored_text(keys):
    """Everything the store holds about credentials, as text."""
    if keys["store"].startswith("postgresql"):
        rows = [*pg_query(keys["store"], "SELECT * FROM midway_key_credentials",
                          schema=keys["schema"]),
                *pg_query(keys["store"], "SELECT * FROM midway_keys", schema=keys["schema"])]
        return repr([dict(r) for r in rows])
    with sqlite3.connect(keys["store"]) as conn:
        return repr(conn.execute("SELECT * FROM midway_key_credentials").fetchall()) + \
            repr(conn.execute("SELECT * FROM midway_keys").fetchall())


def test_create_use_rotate_revoke(tmp_path, keys_config, midway_factory, fake_upstream):
    config = write_config(tmp_path, keys_config)
    issued = run_cli(config, "create", "--name", "alice", "--team", "search",
                     "--expires", "30d", "--models", "claude-sonnet-*", "--label", "env=dev")
    secret = issued["secret"]
    assert secret.startswith(issued["credentials"][0]["prefix"] + "_")
    assert issued["team"] == "search" and issued["labels"] == {"env": "dev"}
    listed = run_cli(config, "list")
    assert issued["id"] in [k["id"] for k in listed]
    assert secret not in str(listed) and secret.split("_", 1)[1] not in stored_text(keys_config)

    proxy = midway_factory(config={"keys": keys_config}, upstream_api_key="sk-ant-real")
    msg = ask(proxy.url, secret)
    assert msg.content[0].text
    seen = fake_upstream.messages_requests[-1].headers
    assert seen.get("x-api-key") == "sk-ant-real"
    assert "mw-" not in str(dict(seen))

    # Scope: another model is refused before any upstream contact.
    before = len(fake_upstream.requests)
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        ask(proxy.url, secret, model="claude-opus-4-8")
    assert info.value.body["error"]["type"] == "permission_error"
    assert len(fake_upstream.requests) == before

    # Rotation with a grace period: both secrets work, then only the new one.
    rotated = run_cli(config, "rotate", issued["id"], "--grace", "1h")
    assert rotated["id"] == issued["id"] and rotated["secret"] != secret
    assert len(rotated["credentials"]) == 2
    assert ask(proxy.url, rotated["secret"]).content
    assert ask(proxy.url, secret).content
    again = run_cli(config, "rotate", issued["id"])  # no grace: older secrets end now
    wait_for(lambda: refused(proxy.url, secret) and refused(proxy.url, rotated["secret"]),
             timeout=1.0)
    assert ask(proxy.url, again["secret"]).content

    started = time.monotonic()
    revoked = run_cli(config, "revoke", issued["id"])
    assert revoked["status"] == "revoked"
    wait_for(lambda: refused(proxy.url, again["secret"]), timeout=1.0)
    assert time.monotonic() - started < 1.5  # the CLI itself plus at most one second
    assert issued["id"] not in [k["id"] for k in run_cli(config, "list")]
    assert issued["id"] in [k["id"] for k in run_cli(config, "list", "--all")]


def test_expiry_and_bad_input(tmp_path, keys_config, midway_factory):
    config = write_config(tmp_path, keys_config)
    proxy = midway_factory(config={"keys": keys_config})
    short = run_cli(config, "create", "--name", "temp", "--expires", "2s")
    assert ask(proxy.url, short["secret"]).content
    wait_for(lambda: refused(proxy.url, short["secret"]), timeout=5)
    listed = run_cli(config, "list", "--all")
    assert [k["status"] for k in listed if k["id"] == short["id"]] == ["expired"]
    assert "in the past" in run_cli_failing(config, "create", "--name", "x", "--expires",
                                            "2001-01-01")
    assert "no key" in run_cli_failing(config, "revoke", "key_aaaaaaaaaaaa")
    assert "expected a duration" in run_cli_failing(config, "rotate", short["id"], "--grace",
                                                  "soon")


class OtherUpstream:
    def __init__(self, url):
        self.url = url

    @hookimpl
    def choose_upstream(self, exchange):
        return Upstream(url=self.url, name="other")


def test_upstream_scope(tmp_path, keys_config, midway_factory, fake_upstream):
    config = write_config(tmp_path, keys_config)
    proxy = midway_factory(plugins=[("other", OtherUpstream(fake_upstream.url))],
                           config={"keys": keys_config})
    limited = run_cli(config, "create", "--name", "a", "--upstreams", "default")
    allowed = run_cli(config, "create", "--name", "b", "--upstreams", "other,default")
    before = len(fake_upstream.requests)
    with pytest.raises(anthropic.PermissionDeniedError):
        ask(proxy.url, limited["secret"])
    assert len(fake_upstream.requests) == before
    assert ask(proxy.url, allowed["secret"]).content


def test_derived_keys_stay_within_parent(tmp_path, keys_config, midway_factory):
    config = write_config(tmp_path, keys_config)
    proxy = midway_factory(config={"keys": keys_config})
    parent = run_cli(config, "create", "--name", "lead", "--team", "search", "--expires", "7d",
                     "--models", "claude-sonnet-*", "--upstreams", "default",
                     "--label", "project=atlas")
    wider = [
        ["--models", "claude-opus-*"],
        ["--models", "claude-*"],
        ["--models", "claude-sonnet-?-6"],
        ["--upstreams", "other"],
        ["--team", "ads"],
        ["--label", "project=other"],
        ["--expires", "30d"],
        ["--capability", "keys:create"],
    ]
    for options in wider:
        output = run_cli_failing(config, "create", "--name", "c", "--parent", parent["id"],
                                 *options)
        assert "parent" in output, options
    child = run_cli(config, "create", "--name", "intern", "--parent", parent["id"],
                    "--models", "claude-sonnet-4-*", "--expires", "1d")
    assert child["parent_id"] == parent["id"] and child["team"] == "search"
    assert child["labels"] == {"project": "atlas"} and child["upstreams"] == ["default"]
    assert ask(proxy.url, child["secret"], model="claude-sonnet-4-6").content
    with pytest.raises(anthropic.PermissionDeniedError):
        ask(proxy.url, child["secret"], model="claude-sonnet-3-7")
    grandchild = run_cli(config, "create", "--name", "bot", "--parent", child["id"],
                         "--expires", "1h")
    assert grandchild["models"] == ["claude-sonnet-4-*"]
    run_cli(config, "revoke", parent["id"])
    wait_for(lambda: refused(proxy.url, child["secret"])
             and refused(proxy.url, grandchild["secret"]), timeout=1.0)
    statuses = {k["id"]: k["status"] for k in run_cli(config, "list", "--all")}
    assert statuses[child["id"]] == statuses[grandchild["id"]] == "revoked"


def test_groups_ride_on_the_key_into_the_principal(tmp_path, keys_config, midway_factory):
    """A key's groups reach ``exchange.principal.groups`` (group policy for CI and service
    accounts); a derived key keeps them exactly; a client's header never adds one."""
    seen: list[tuple[str, ...]] = []

    class Spy:
        @hookimpl
        def pre_request(self, exchange):
            seen.append(exchange.principal.groups)

    config = write_config(tmp_path, keys_config)
    proxy = midway_factory(config={"keys": keys_config}, plugins=[("spy", Spy())])
    ci = run_cli(config, "create", "--name", "ci", "--group", "eng,ci", "--group", "ci",
                 "--capability", "keys:create")
    assert ci["groups"] == ["ci", "eng"]
    assert run_cli(config, "show", ci["id"])["groups"] == ["ci", "eng"]
    child = run_cli(config, "create", "--name", "job", "--parent", ci["id"])
    assert child["groups"] == ["ci", "eng"]
    for options in (["--group", "ci"], ["--group", "ci,eng,admins"]):
        output = run_cli_failing(config, "create", "--name", "c", "--parent", ci["id"],
                                 *options)
        assert "keeps its parent's groups" in output
    assert "not a group name" in run_cli_failing(config, "create", "--name", "x",
                                                 "--group", "tab\tgroup")
    plain = run_cli(config, "create", "--name", "plain")
    assert plain["groups"] == []
    ask(proxy.url, ci["secret"])
    ask(proxy.url, child["secret"])
    anthropic.Anthropic(base_url=proxy.url, api_key=plain["secret"], max_retries=0,
                        default_headers={"x-midway-groups": "admins"}).messages.create(
        model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert seen == [("ci", "eng"), ("ci", "eng"), ()]
