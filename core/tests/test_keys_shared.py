"""Two midway instances sharing one PostgreSQL key store: what one does, the other sees."""

import time

import anthropic
import orjson
from keys_support import ADMIN_KEY, ask, http

from midway.testing import wait_for


def refused(url, key):
    try:
        ask(url, key)
    except anthropic.AuthenticationError:
        return True
    return False


def admin(url, method, path, body=None):
    code, raw = http(method, url + path, orjson.dumps(body) if body is not None else None,
                     {"x-api-key": ADMIN_KEY})
    assert code in (200, 201), raw
    return orjson.loads(raw)


def test_revocation_seen_by_second_instance_within_one_second(postgres_dsn, pg_schema,
                                                              midway_factory):
    keys = {"enabled": True, "store": postgres_dsn, "schema": pg_schema}  # default poll interval
    first = midway_factory(config={"keys": keys}, admin_key=ADMIN_KEY)
    second = midway_factory(config={"keys": keys})
    for round_ in range(3):
        issued = admin(first.url, "POST", "/_midway/admin/keys", {"name": f"dev{round_}"})
        # Issued on the first, usable on the second at once (and now cached there).
        assert ask(second.url, issued["secret"]).content
        assert ask(first.url, issued["secret"]).content
        started = time.monotonic()
        admin(first.url, "POST", f"/_midway/admin/keys/{issued['id']}/revoke")
        wait_for(lambda: refused(second.url, issued["secret"]), timeout=1.0, interval=0.02)
        assert time.monotonic() - started < 1.0
        assert refused(first.url, issued["secret"])


def test_rotation_without_grace_seen_by_second_instance(postgres_dsn, pg_schema,
                                                        midway_factory):
    keys = {"enabled": True, "store": postgres_dsn, "schema": pg_schema}
    first = midway_factory(config={"keys": keys}, admin_key=ADMIN_KEY)
    second = midway_factory(config={"keys": keys})
    issued = admin(first.url, "POST", "/_midway/admin/keys", {"name": "svc"})
    assert ask(second.url, issued["secret"]).content
    rotated = admin(first.url, "POST", f"/_midway/admin/keys/{issued['id']}/rotate")
    wait_for(lambda: refused(second.url, issued["secret"]), timeout=1.0, interval=0.02)
    assert ask(second.url, rotated["secret"]).content
