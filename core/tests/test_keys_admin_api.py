# ruff: noqa: F811 - pytest fixtures imported from keys_support
"""The admin API and derived-key API: lifecycle on SQLite and PostgreSQL, every response
validated against the OpenAPI document the server publishes."""

import re
from pathlib import Path

import anthropic
import orjson
import pytest
from keys_support import (  # noqa: F401 - fixtures
    ADMIN_KEY,
    OpenAPIChecker,
    ask,
    http,
    keys_config,
)
from openapi_spec_validator import validate

from midway.keys.admin_api import openapi_document
from midway.testing import wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "admin-api.md"


class Api:
    def __init__(self, base, checker, key=ADMIN_KEY):
        self.base = base
        self.checker = checker
        self.key = key

    def __call__(self, method, path, body=None, key=None, status=200):
        headers = {"authorization": f"Bearer {key or self.key}"} if (key or self.key) else {}
        code, content = http(method, self.base + path,
                             orjson.dumps(body) if body is not None else None, headers)
        assert code == status, content
        return self.checker.check(method, path, code, content)


def refused(url, key):
    try:
        ask(url, key)
    except anthropic.AuthenticationError:
        return True
    return False


@pytest.fixture
def served(keys_config, midway_factory):
    proxy = midway_factory(config={"keys": keys_config}, admin_key=ADMIN_KEY)
    code, raw = http("GET", proxy.url + "/_midway/admin/openapi.json")
    assert code == 200
    spec = orjson.loads(raw)
    validate(spec)
    return proxy, OpenAPIChecker(spec)


def test_admin_lifecycle(served):
    proxy, checker = served
    api = Api(proxy.url, checker)
    created = api("POST", "/_midway/admin/keys", {
        "name": "ci", "team": "infra", "models": ["claude-sonnet-*"], "expires_in": "30d",
        "labels": {"env": "ci"}, "capabilities": ["keys:create"]}, status=201)
    secret = created["secret"]
    assert ask(proxy.url, secret).content

    # The admin API refuses anything but the admin key, in Anthropic's format.
    for key in (secret, "wrong", None):
        anon = Api(proxy.url, checker, key=key)
        error = anon("GET", "/_midway/admin/keys", status=401)
        assert error["error"]["type"] == "authentication_error"
    # ...and the admin key is not a client key.
    assert refused(proxy.url, ADMIN_KEY)

    listed = api("GET", "/_midway/admin/keys")["data"]
    assert created["id"] in [k["id"] for k in listed] and secret not in str(listed)
    one = api("GET", f"/_midway/admin/keys/{created['id']}")
    assert one["models"] == ["claude-sonnet-*"] and "secret" not in one
    renamed = api("PATCH", f"/_midway/admin/keys/{created['id']}",
                  {"name": "ci-runner", "labels": {"env": "prod"}})
    assert renamed["name"] == "ci-runner" and renamed["labels"] == {"env": "prod"}
    api("PATCH", f"/_midway/admin/keys/{created['id']}", {"models": ["*"]}, status=400)
    api("GET", "/_midway/admin/keys/key_aaaaaaaaaaaa", status=404)
    api("POST", "/_midway/admin/keys", {"team": "x"}, status=400)
    api("POST", "/_midway/admin/keys", {"name": "x", "capabilities": ["root"]}, status=400)

    # Derived keys: never more scope than the parent.
    api("POST", "/_midway/admin/keys", {"name": "d", "parent_id": created["id"],
                                        "models": ["claude-opus-*"]}, status=403)
    api("POST", "/_midway/admin/keys", {"name": "d", "parent_id": "key_aaaaaaaaaaaa"},
        status=404)
    child = api("POST", "/_midway/admin/keys", {"name": "d", "parent_id": created["id"]},
                status=201)
    assert child["models"] == ["claude-sonnet-*"] and child["expires_at"] == created["expires_at"]
    children = api("GET", f"/_midway/admin/keys?parent_id={created['id']}")["data"]
    assert [k["id"] for k in children] == [child["id"]]

    rotated = api("POST", f"/_midway/admin/keys/{created['id']}/rotate", {"grace": 0})
    wait_for(lambda: refused(proxy.url, secret), timeout=1.0)
    assert ask(proxy.url, rotated["secret"]).content
    graced = api("POST", f"/_midway/admin/keys/{created['id']}/rotate", {"grace": "1h"})
    assert len(graced["credentials"]) == 2
    assert ask(proxy.url, rotated["secret"]).content
    api("POST", f"/_midway/admin/keys/{created['id']}/rotate", {"grace": "later"}, status=400)

    revoked = api("DELETE", f"/_midway/admin/keys/{created['id']}")
    assert revoked["status"] == "revoked"
    wait_for(lambda: refused(proxy.url, graced["secret"]) and refused(proxy.url, child["secret"]),
             timeout=1.0)
    api("POST", f"/_midway/admin/keys/{created['id']}/rotate", status=409)
    again = api("POST", f"/_midway/admin/keys/{child['id']}/revoke")
    assert again["status"] == "revoked"

    documented = {(method.upper(), path) for path, ops in checker.spec["paths"].items()
                  if path.startswith("/_midway/admin/keys") for method in ops
                  if method != "parameters"}
    assert documented <= {(method, path) for method, path, _ in checker.checked}


def test_derived_keys_api(served):
    proxy, checker = served
    admin = Api(proxy.url, checker)
    lead = admin("POST", "/_midway/admin/keys", {
        "name": "lead", "team": "search", "models": ["claude-sonnet-*"], "expires_in": "7d",
        "capabilities": ["keys:create"]}, status=201)
    plain = admin("POST", "/_midway/admin/keys", {"name": "plain"}, status=201)
    as_lead = Api(proxy.url, checker, key=lead["secret"])

    Api(proxy.url, checker, key=plain["secret"])("GET", "/_midway/keys", status=403)
    Api(proxy.url, checker, key="mw-nope")("GET", "/_midway/keys", status=401)
    as_lead("POST", "/_midway/keys", {"name": "x", "models": ["claude-opus-4-8"]}, status=403)
    as_lead("POST", "/_midway/keys", {"name": "x", "team": "ads"}, status=403)
    as_lead("POST", "/_midway/keys", {"name": "x", "expires_in": "30d"}, status=403)
    as_lead("POST", "/_midway/keys", {"name": "x", "parent_id": plain["id"]}, status=400)
    worker = as_lead("POST", "/_midway/keys", {"name": "worker", "models": ["claude-sonnet-4-6"],
                                               "capabilities": ["keys:create"]}, status=201)
    assert worker["parent_id"] == lead["id"] and worker["team"] == "search"
    assert ask(proxy.url, worker["secret"], model="claude-sonnet-4-6").content
    as_worker = Api(proxy.url, checker, key=worker["secret"])
    as_worker("POST", "/_midway/keys", {"name": "y", "models": ["claude-sonnet-*"]}, status=403)
    bot = as_worker("POST", "/_midway/keys", {"name": "bot"}, status=201)
    assert bot["models"] == ["claude-sonnet-4-6"] and bot["capabilities"] == []

    assert [k["id"] for k in as_lead("GET", "/_midway/keys")["data"]] == [worker["id"]]
    as_worker("POST", f"/_midway/keys/{lead['id']}/revoke", status=404)
    as_worker("POST", f"/_midway/keys/{plain['id']}/revoke", status=404)
    assert as_lead("POST", f"/_midway/keys/{bot['id']}/revoke")["status"] == "revoked"
    wait_for(lambda: refused(proxy.url, bot["secret"]), timeout=1.0)
    assert ask(proxy.url, worker["secret"], model="claude-sonnet-4-6").content


def test_published_document_is_the_documented_one():
    """The document the server publishes is the one in docs/admin-api.md, and valid."""
    validate(orjson.loads(openapi_document()))
    text = DOCS.read_text()
    blocks = re.findall(r"```json\n(.*?)\n```", text.split("## OpenAPI", 1)[1], re.S)
    assert len(blocks) == 1
    assert orjson.loads(blocks[0]) == orjson.loads(openapi_document())


def test_admin_api_is_off_without_admin_key(keys_config, midway_factory):
    proxy = midway_factory(config={"keys": keys_config})
    code, body = http("GET", proxy.url + "/_midway/admin/keys",
                      headers={"authorization": "Bearer anything"})
    assert code == 404
    assert orjson.loads(body)["error"]["type"] == "not_found_error"
    assert http("GET", proxy.url + "/_midway/admin/openapi.json")[0] == 404
