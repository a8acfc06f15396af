"""The writer reads a request body's top-level values as the client sent them, parsing only
those the part cache does not hold (Redactor.raw_json_body): what it stores must be exactly
what parsing the whole body with orjson and splitting it gives."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from midway_audit.redact import Redactor

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                     st.floats(allow_nan=False), st.text(max_size=20),
                     st.sampled_from(["sk-ant-" + "a" * 20, "me@example.com", "x" * 300,
                                      "\x01", "é🙂", "\\"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
_KEYS = st.sampled_from(["model", "messages", "system", "tools", "max_tokens", "x", "é"])


@st.composite
def _bodies(draw: Any) -> bytes:
    pairs = draw(st.lists(st.tuples(_KEYS, st.one_of(
        _VALUES, st.lists(_VALUES, max_size=4), st.text(max_size=30))), max_size=6))
    style = draw(st.sampled_from(["compact", "spaced", "ascii"]))
    # pairs written one by one: a key may repeat, as a client may send it
    if style == "compact":
        inner = ",".join(orjson.dumps(k).decode() + ":" + _dumps(v) for k, v in pairs)
    else:
        inner = ", ".join(json.dumps(k, ensure_ascii=style == "ascii") + ": "
                          + json.dumps(v, ensure_ascii=style == "ascii") for k, v in pairs)
    raw = ("{" + inner + "}").encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"", b"\xff", b",", b"}", b" ", b'"\\ud800"',
                                               b"\x00"])) + raw[at:]
    return raw


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # an integer past 64 bits
        return json.dumps(value)


def _model(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _parsed_whole(redactor: Redactor, raw: bytes) -> Any:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    model = parsed.get("model")
    return redactor.json_body(parsed), model


@settings(max_examples=600, deadline=None)
@given(st.lists(_bodies(), min_size=1, max_size=3))
def test_reading_the_raw_values_gives_what_parsing_the_body_gives(bodies: list[bytes]):
    redactor = Redactor()
    for raw in bodies * 2:  # each body read twice: values found in the cache the second time
        read = redactor.raw_json_body(raw)
        expected = _parsed_whole(Redactor(), raw)
        if read is not None:
            assert expected is not None, raw
            assert read[0] == expected[0]
            assert _model(read[1]) == _model(expected[1])
        _parsed_whole(redactor, raw)  # the cache as the whole-body path fills it, too


def test_a_claude_code_body_is_read_raw():
    body = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 5,
                         "system": "s" * 2000, "messages": [{"role": "user", "content": "hi"}]})
    read = Redactor().raw_json_body(body)
    assert read is not None
    assert read[1] == "claude-sonnet-4-6"
    assert read[0] == Redactor().json_body(orjson.loads(body))


def test_a_value_sent_twice_is_left_to_orjson():
    """The first of two values of one key is never read: its bytes (here not UTF-8) would go
    unchecked."""
    raw = b'{"tools":[null,{"\xff":null}],"tools":[]}'
    assert Redactor().raw_json_body(raw) is None
    assert Redactor().raw_json_body(b'{"tools":[null],"tools":[]}') is None


def test_a_deeply_nested_body_is_left_to_orjson():
    """Past orjson's depth the body is stored as text, not as parts; msgspec's own limit
    (a RecursionError) must not make the record fail instead."""
    for depth in (900, 1100, 5000):
        body = b'{"messages":[' + b"[" * depth + b"]" * depth + b"]}"
        assert Redactor().raw_json_body(body) is None
        body = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
        assert Redactor().raw_json_body(body) is None
