"""Key format, hashing, durations and the scope-subset rule, without a server."""

import time

import pytest

from midway.keys import tokens
from midway.keys.model import KeysError, Scope, check_within, parse_duration, parse_time


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


def test_durations_and_times():
    assert parse_duration("90") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("12h") == 43200
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("2w") == 14 * 86400
    assert parse_time("2030-01-01") == parse_time("2030-01-01T00:00:00Z")
    with pytest.raises(KeysError):
        parse_duration("soon")
    with pytest.raises(KeysError):
        parse_time("next week")


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
