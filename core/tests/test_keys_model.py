"""Key format, hashing, durations and the scope-subset rule, without a server."""

import time
from datetime import UTC, datetime

import pytest

from midway.keys import tokens
from midway.keys.model import KeysError, Scope, check_within
from midway.keys.service import scope_from


def test_key_format_and_hash():
    secret_id, key = tokens.new_secret()
    parsed = tokens.parse(key)
    assert parsed is not None and parsed[0] == secret_id
    assert key.startswith(tokens.visible_prefix(secret_id) + "_") and len(key) == 3 + 12 + 1 + 43
    salt = tokens.new_salt()
    stored = tokens.digest(salt, parsed[1])
    assert tokens.matches(salt, stored, parsed[1])
    assert not tokens.matches(salt, stored, parsed[1][:-1] + "x")
    assert not tokens.matches(tokens.new_salt(), stored, parsed[1])  # the salt matters
    assert not tokens.matches(None, None, parsed[1])
    for bad in ("", "mw-", key + "x", key[:-1], key.replace("mw-", "mx-"), key.upper(),
                "sk-ant-api03-abc"):
        assert tokens.parse(bad) is None


def test_expiry_spellings():
    """The lifetimes and instants the keys CLI and API accept (midway.timeparse's grammar)."""
    now = 1_800_000_000.0  # 2027-01-15

    def expires(**spec: object) -> float | None:
        return scope_from(dict(spec), now).expires_at

    for text, seconds in [("90", 90), ("15m", 900), ("12h", 43200), ("30d", 30 * 86400),
                          ("2w", 14 * 86400), (3600, 3600)]:
        assert expires(expires_in=text) == now + seconds
    assert expires(expires_at="2030-01-01") == expires(expires_at="2030-01-01T00:00:00Z") \
        == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert expires(expires_at="2030-01-01T02:00:00+02:00") == expires(expires_at="2030-01-01")
    for spec, message in [({"expires_in": "soon"}, "expires_in: expected a duration"),
                          ({"expires_at": "next week"}, "expires_at: expected a time"),
                          ({"expires_at": ""}, "expires_at: expected a time"),
                          ({"expires_at": "2001-01-01"}, "expiry is in the past")]:
        with pytest.raises(KeysError, match=f"^{message}"):
            scope_from(spec, now)


PARENT = Scope(team="search", labels={"project": "atlas"}, models=("claude-sonnet-*",),
               upstreams=("default",), capabilities=("keys:create",),
               expires_at=time.time() + 3600, allow_project_header=False)


def child(**changes):
    base = dict(team="search", labels={"project": "atlas"}, models=("claude-sonnet-4-*",),
                upstreams=("default",), capabilities=(), expires_at=PARENT.expires_at - 1,
                allow_project_header=False)
    return Scope(**{**base, **changes})


def test_narrower_scope_is_accepted():
    check_within(child(), PARENT)
    check_within(child(models=("claude-sonnet-*",), capabilities=("keys:create",)), PARENT)
    check_within(child(labels={"project": "atlas", "user": "ann"}), PARENT)
    check_within(Scope(models=("anything",)), Scope())  # an unrestricted parent


@pytest.mark.parametrize("changes", [
    {"team": "ads"},
    {"team": None},
    {"labels": {}},
    {"labels": {"project": "other"}},
    {"models": ()},
    {"models": ("claude-opus-*",)},
    {"models": ("claude-*",)},
    {"models": ("*",)},
    {"models": ("claude-sonnet-?",)},  # `?` matches the parent's text but not its meaning
    {"models": ("claude-sonnet-[4]*",)},
    {"upstreams": ()},
    {"upstreams": ("default", "bedrock")},
    {"capabilities": ("keys:create", "admin")},
    {"expires_at": None},
    {"expires_at": PARENT.expires_at + 1},
    {"allow_project_header": True},
])
def test_wider_scope_is_refused(changes):
    with pytest.raises(KeysError) as info:
        check_within(child(**changes), PARENT)
    assert info.value.status == 403
