"""midway.assemble: a stream's events in, the Message the non-streaming API returns out.

The fixtures in ``streams/`` are Anthropic streams in the shapes the API sends (extended thinking
with a signed thinking block and a tool call, a web search with server_tool_use, its result and
cited text, redacted thinking with a pause_turn and a container), each beside the JSON answer it
stands for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sse import split

from midway.assemble import MessageAssembler
from midway.fake_upstream import Reply, build_message, stream_events
from midway.observe import StreamObserver
from midway.sse import SSEParser, encode_event
from midway.testing import make_exchange

STREAMS = Path(__file__).parent / "streams"
FIXTURES = sorted(p.stem for p in STREAMS.glob("*.sse"))


def fixture(name: str) -> tuple[bytes, dict[str, Any]]:
    expected = json.loads((STREAMS / f"{name}.json").read_text())
    return (STREAMS / f"{name}.sse").read_bytes(), expected


def assembled(raw: bytes, limit: int | None = None) -> MessageAssembler:
    assembler = MessageAssembler(limit)
    assembler.feed_bytes(raw)
    return assembler


def payloads(raw: bytes) -> list[Any]:
    return [event.json() for event in SSEParser().feed(raw)]


# -- real stream shapes -----------------------------------------------------------------------

def test_there_are_fixtures():
    assert {"thinking_tool_use", "web_search", "redacted_pause_turn"} <= set(FIXTURES)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_assembles_to_its_json_answer(name):
    raw, expected = fixture(name)
    assembler = assembled(raw)
    assert assembler.message() == expected
    assert assembler.exact and assembler.complete and assembler.problem is None
    assert assembler.unknown == [] and assembler.error is None and not assembler.truncated
    assert assembler.usage == expected["usage"]
    assert assembler.model == expected["model"]
    assert assembler.stop_reason == expected["stop_reason"]
    assert assembler.stop_sequence is None


@pytest.mark.parametrize("name", FIXTURES)
def test_every_way_of_feeding_gives_the_same_message(name):
    raw, expected = fixture(name)
    by_event = MessageAssembler()
    for event in SSEParser().feed(raw):
        by_event.feed_event(event)
    by_dict = MessageAssembler()
    for event in SSEParser().feed(raw):
        by_dict.feed(event.name, orjson.loads(event.data))
    by_list = MessageAssembler()
    by_list.feed_all(payloads(raw))  # no names: the payloads' types say
    for assembler in (by_event, by_dict, by_list):
        assert assembler.message() == expected
        assert assembler.exact


def test_thinking_signature_is_byte_exact():
    raw, expected = fixture("thinking_tool_use")
    signature = assembled(raw).message()["content"][0]["signature"]
    assert signature.encode() == expected["content"][0]["signature"].encode()
    assert "+/" in signature and signature.endswith("=")  # base64 bytes nobody rewrote


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FIXTURES), st.lists(st.integers(min_value=0, max_value=20_000),
                                            max_size=80))
def test_any_split_of_the_bytes_gives_the_same_message(name, cuts):
    raw, expected = fixture(name)
    assembler = MessageAssembler()
    for piece in split(raw, cuts):
        assembler.feed_bytes(piece)
    assert assembler.message() == expected
    assert assembler.exact


@pytest.mark.parametrize("name", FIXTURES)
def test_crlf_line_ends_and_comments(name):
    raw, expected = fixture(name)
    variant = b": keep-alive\r\n\r\n" + raw.replace(b"\n", b"\r\n")
    assembler = assembled(variant)
    assert assembler.message() == expected
    assert assembler.exact


# -- the fake upstream: its stream assembles to its JSON answer -------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
_JSONABLE = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12)
_BLOCKS = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _TEXT),
    st.builds(lambda t, s: {"type": "thinking", "thinking": t, "signature": s}, _TEXT,
              st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
                      min_size=1, max_size=200)),
    st.builds(lambda n, i: {"type": "tool_use", "name": n, "input": i},
              st.sampled_from(["Bash", "Edit", "get_weather"]),
              st.dictionaries(_TEXT, _JSONABLE, max_size=5)),
    st.just({"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_BLOCKS, min_size=1, max_size=6), st.integers(1, 9), st.integers(1, 9),
       st.lists(st.integers(min_value=0, max_value=50_000), max_size=30))
def test_fake_upstream_stream_equals_its_json_answer(blocks, text_chunks, json_fragments, cuts):
    reply = Reply(content=blocks, text_chunks=text_chunks, json_fragments=json_fragments)
    message = build_message({"model": "claude-sonnet-4-6"}, reply, b"{}")
    raw = b"".join(stream_events(message, reply))
    assembler = MessageAssembler()
    for piece in split(raw, cuts):
        assembler.feed_bytes(piece)
    assert assembler.message() == message
    assert assembler.exact


def test_fake_upstream_over_http_stream_equals_json(fake_upstream):
    blocks = [{"type": "thinking", "thinking": "plan", "signature": "SIG+/="},
              {"type": "text", "text": "naïve café — 日本語 🎉 " * 20},
              {"type": "tool_use", "id": "toolu_01X", "name": "Edit",
               "input": {"path": "a.py", "lines": [1, 2]}}]
    usage = {"input_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 7,
             "output_tokens": 202}  # else estimated from the body, which "stream" lengthens
    fake_upstream.reply(Reply(content=blocks, usage=usage, chunk_size=7),
                        Reply(content=blocks, usage=usage))
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": []}
    assembler = MessageAssembler()
    with httpx.Client(base_url=fake_upstream.url) as client:
        with client.stream("POST", "/v1/messages", json={**body, "stream": True}) as streamed:
            for chunk in streamed.iter_raw():
                assembler.feed_bytes(chunk)
        answer = client.post("/v1/messages", json=body).json()
    message = assembler.message()
    assert message.pop("id").startswith("msg_01") and answer.pop("id").startswith("msg_01")
    assert message == answer
    assert assembler.exact


# -- usage ------------------------------------------------------------------------------------

def start(usage: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
               "content": [], "stop_reason": None, "stop_sequence": None, **fields}
    if usage is not None:
        message["usage"] = usage
    return {"type": "message_start", "message": message}


def delta(usage: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "message_delta", "delta": fields}
    if usage is not None:
        event["usage"] = usage
    return event


def test_message_delta_usage_replaces_per_field_and_is_never_summed():
    assembler = MessageAssembler()
    assembler.feed_all([
        start({"input_tokens": 100, "cache_read_input_tokens": 20, "output_tokens": 1,
               "service_tier": "standard"}),
        delta({"output_tokens": 40}, stop_reason="tool_use"),
        delta({"output_tokens": 47, "cache_read_input_tokens": 25}),
    ])
    assert assembler.usage == {"input_tokens": 100, "cache_read_input_tokens": 25,
                               "output_tokens": 47, "service_tier": "standard"}
    assert assembler.stop_reason == "tool_use"  # a later delta without one keeps it


def test_zero_or_null_in_message_delta_never_erases_a_count():
    assembler = MessageAssembler()
    assembler.feed_all([
        start({"input_tokens": 96, "cache_creation_input_tokens": 12, "output_tokens": 1}),
        delta({"input_tokens": 0, "cache_creation_input_tokens": None, "output_tokens": 37,
               "cache_read_input_tokens": 0}),
    ])
    assert assembler.usage == {"input_tokens": 96, "cache_creation_input_tokens": 12,
                               "output_tokens": 37, "cache_read_input_tokens": 0}


def test_usage_only_in_message_delta_and_nested_objects_field_by_field():
    assembler = MessageAssembler()
    assembler.feed_all([
        start(),  # some upstreams leave usage out of message_start
        delta({"input_tokens": 12, "output_tokens": 6,
               "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 2}}),
        delta({"server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 0}}),
    ])
    assert assembler.usage == {"input_tokens": 12, "output_tokens": 6,
                               "server_tool_use": {"web_search_requests": 3,
                                                   "web_fetch_requests": 2}}


def test_message_returns_copies():
    raw, expected = fixture("web_search")
    assembler = assembled(raw)
    first = assembler.message()
    first["usage"]["server_tool_use"]["web_search_requests"] = 99
    first["content"][3]["citations"].clear()
    first["content"][0]["text"] = "changed"
    assert assembler.message() == expected


# -- partial JSON, cut streams, limits --------------------------------------------------------

def tool_stream(fragments: list[str], stop: bool = True) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [start({"input_tokens": 5, "output_tokens": 1}), {
        "type": "content_block_start", "index": 0,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}}]
    events += [{"type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": f}} for f in fragments]
    if stop:
        events += [{"type": "content_block_stop", "index": 0},
                   delta({"output_tokens": 9}, stop_reason="tool_use"), {"type": "message_stop"}]
    return events


def test_input_json_is_joined_then_parsed_once():
    assembler = MessageAssembler()
    assembler.feed_all(tool_stream(["", '{"command": "l', 's -la", "n": [1, ', "2]}"]))
    assert assembler.message()["content"][0]["input"] == {"command": "ls -la", "n": [1, 2]}
    assert assembler.exact


def test_no_input_json_delta_means_empty_input():
    assembler = MessageAssembler()
    assembler.feed_all(tool_stream([]))
    assert assembler.message()["content"][0]["input"] == {}
    assert assembler.exact


def test_a_cut_stream_keeps_the_partial_json_raw():
    assembler = MessageAssembler()
    assembler.feed_all(tool_stream(['{"command": ', '"rm -'], stop=False))
    message = assembler.message()
    assert message["content"][0]["input"] == {"_partial_json": '{"command": "rm -'}
    assert not assembler.complete and not assembler.exact
    assert assembler.problem is None  # nothing wrong with what arrived: it just stopped
    # message() is a snapshot: the rest may still come
    assembler.feed_all([{"type": "content_block_delta", "index": 0,
                         "delta": {"type": "input_json_delta", "partial_json": 'rf x"}'}},
                        {"type": "content_block_stop", "index": 0}, {"type": "message_stop"}])
    assert assembler.message()["content"][0]["input"] == {"command": "rm -rf x"}
    assert assembler.exact


def test_tool_input_that_is_not_json_is_kept_raw_and_not_exact():
    assembler = MessageAssembler()
    assembler.feed_all(tool_stream(['{"a": tru']))
    assert assembler.message()["content"][0]["input"] == {"_partial_json": '{"a": tru'}
    assert assembler.complete and not assembler.exact
    assert assembler.problem == "tool input that is not JSON"


def test_limit_drops_deltas_past_it_but_keeps_signatures_whole():
    reply = Reply(content=[{"type": "thinking", "thinking": "t" * 300, "signature": "S" * 500},
                           {"type": "text", "text": "x" * 5_000}], text_chunks=50)
    message = build_message({"model": "m"}, reply, b"{}")
    assembler = assembled(b"".join(stream_events(message, reply)), limit=1_000)
    got = assembler.message()
    assert assembler.truncated and not assembler.exact
    assert got["content"][0]["signature"] == "S" * 500
    assert len(got["content"][0]["thinking"]) + len(got["content"][1]["text"]) <= 1_000
    assert got["stop_reason"] == message["stop_reason"] and got["usage"] == message["usage"]


# -- errors, order, and what it does not know -------------------------------------------------

def test_error_event():
    reply = Reply()
    message = build_message({"model": "m"}, reply, b"{}")
    assembler = assembled(b"".join(stream_events(message, reply)[:4]) + encode_event(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    assert assembler.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert not assembler.complete and not assembler.exact
    assert assembler.message()["content"] == [{"type": "text", "text": "Hello from"}]


def test_unknown_events_deltas_and_blocks_are_kept():
    assembler = MessageAssembler()
    future_event = {"type": "message_annotation", "note": {"a": 1}}
    future_delta = {"type": "content_block_delta", "index": 0,
                    "delta": {"type": "compaction_delta", "content": "summary"}}
    assembler.feed_all([
        start({"input_tokens": 1, "output_tokens": 1}),
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "compaction", "content": None}},
        future_delta,
        {"type": "content_block_stop", "index": 0},
        future_event,
        delta({"output_tokens": 2}, stop_reason="compaction"),
        {"type": "message_stop"},
    ])
    message = assembler.message()
    assert message["content"] == [{"type": "compaction", "content": None}]
    assert message["stop_reason"] == "compaction"
    assert assembler.unknown == [("content_block_delta", future_delta),
                                 ("message_annotation", future_event)]
    assert assembler.complete and not assembler.exact
    assert assembler.problem == "unknown delta 'compaction_delta'"


def test_an_unknown_block_type_alone_is_still_exact():
    raw, _ = fixture("redacted_pause_turn")
    text = raw.replace(b'"redacted_thinking"', b'"future_block"')
    assembler = assembled(text)
    assert assembler.message()["content"][0]["type"] == "future_block"
    assert assembler.exact


@pytest.mark.parametrize(("events", "problem"), [
    ([{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
      start()], "content_block_start before message_start"),
    ([start(), {"type": "message_stop"}, delta(stop_reason="end_turn")],
     "message_delta after message_stop"),
    ([start(), start()], "a message_start without a message, or a second one"),
    ([start(), {"type": "content_block_delta", "index": 3,
                "delta": {"type": "text_delta", "text": "x"}}],
     "a content_block_delta of a block not open, or malformed"),
    ([start(), {"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}, {"type": "message_stop"}],
     "message_stop with a block still open"),
    ([start(), {"type": "content_block_stop", "index": 0}],
     "content_block_stop of a block not open"),
    ([start(), None], "an event whose data is not a JSON object"),
])
def test_out_of_order_or_malformed_is_noted(events, problem):
    assembler = MessageAssembler()
    assembler.feed_all(events)
    assert assembler.problem == problem
    assert not assembler.exact


def test_pings_and_comments_are_nothing():
    raw, expected = fixture("thinking_tool_use")
    noisy = raw.replace(b"event: content_block_stop",
                        b": hi\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n"
                        b"event: ping\ndata: \n\nevent: content_block_stop")
    assembler = assembled(noisy)
    assert assembler.message() == expected
    assert assembler.exact


_EVENT_NAMES = st.sampled_from(["message_start", "content_block_start", "content_block_delta",
                                "content_block_stop", "message_delta", "message_stop", "error",
                                "ping", "future", None])
# payloads come from orjson, which reads integers beyond 64 bits as floats
_ANY = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                        st.sampled_from(["type", "index", "delta", "content_block", "message",
                                         "usage", "text", "partial_json", "error", "x"]),
                        inner, max_size=4), max_leaves=10)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_EVENT_NAMES, _ANY), max_size=25))
def test_garbage_events_never_raise(events):
    assembler = MessageAssembler(limit=50)
    for name, payload in events:
        assembler.feed(name, payload)
    message = assembler.message()
    orjson.dumps(message)
    assert isinstance(assembler.usage, dict)
    assert assembler.exact is False or assembler.complete


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1500), st.lists(st.integers(0, 2000), max_size=20))
def test_garbage_bytes_never_raise(data, cuts):
    assembler = MessageAssembler()
    for piece in split(data, cuts):
        assembler.feed_bytes(piece)
    assembler.message()
    assert not assembler.exact


# -- the observer reads through it ------------------------------------------------------------

def test_observer_keeps_input_tokens_when_a_delta_reports_zero():
    raw, expected = fixture("redacted_pause_turn")
    exchange = make_exchange()
    observer = StreamObserver(exchange)
    for piece in split(raw, [17, 300, 301, 900]):
        observer.feed(piece)
    assert exchange.usage.input_tokens == 96 and exchange.usage.output_tokens == 37
    assert exchange.stop_reason == "pause_turn"
    assert exchange.response_model == expected["model"]
    assert exchange.complete is True


def test_observer_reads_server_tool_use_and_errors():
    raw, _ = fixture("web_search")
    exchange = make_exchange()
    observer = StreamObserver(exchange)
    observer.feed(raw)
    assert exchange.usage.web_search_requests == 1
    assert exchange.usage.input_tokens == 10682
    failed = make_exchange()
    observer = StreamObserver(failed)
    observer.feed(raw[:400] + b"\n\n" + encode_event(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}))
    assert failed.error_type == "overloaded_error"
    assert failed.error == "stream error: overloaded_error"
    assert failed.state.get("midway.complete") is None


_USAGE = st.dictionaries(st.sampled_from(["input_tokens", "output_tokens",
                                          "cache_read_input_tokens", "service_tier"]),
                         st.none() | st.integers(0, 3) | st.sampled_from(["standard"]),
                         max_size=4) | st.dictionaries(
    st.sampled_from(["server_tool_use", "cache_creation"]),
    st.dictionaries(st.sampled_from(["web_search_requests", "ephemeral_5m_input_tokens"]),
                    st.none() | st.integers(0, 3), max_size=2), max_size=2)
_OUTCOME_EVENTS = st.one_of(
    st.builds(lambda usage, model, msg_id: ("message_start", {
        "type": "message_start", "message": {"id": msg_id, "model": model,
                                             "stop_reason": None, "usage": usage}}),
        _USAGE, st.sampled_from(["m1", "m2", None, 3]), st.sampled_from(["msg_1", "msg_2"])),
    st.builds(lambda usage, reason, model: ("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": reason, **model}, "usage": usage}),
        _USAGE, st.sampled_from(["end_turn", "tool_use", None, ""]),
        st.sampled_from([{}, {"model": "m3"}])),
    st.just(("message_stop", {"type": "message_stop"})),
    st.tuples(_EVENT_NAMES, _ANY))


@settings(max_examples=400, deadline=None)
@given(st.lists(_OUTCOME_EVENTS, max_size=12))
def test_observer_reads_usage_and_outcome_as_the_assembler(events):
    """The core's observer keeps no assembler per stream; what it reads is the assembler's
    (usage merged, a second message_start ignored), for events whose name is their type."""
    events = [(name, payload) for name, payload in events if not isinstance(payload, dict)
              or payload.get("type", name) == name]
    exchange = make_exchange()
    observer = StreamObserver(exchange)
    assembler = MessageAssembler()
    expected = make_exchange()
    for name, payload in events:
        observer.feed(encode_event(name or "", payload) if name else
                      b"data: " + orjson.dumps(payload) + b"\n\n")
        if name not in ("message_start", "message_delta", "message_stop", "error"):
            continue
        assembler.feed(name, payload)
        if not isinstance(payload, dict):
            continue
        if name == "message_start" and isinstance(payload.get("message"), dict) and \
                isinstance(payload["message"].get("id"), str):
            expected.response_id = payload["message"]["id"]
        if name in ("message_start", "message_delta"):
            expected.usage.update(assembler.usage)
            expected.response_model = assembler.model or expected.response_model
            expected.stop_reason = assembler.stop_reason or expected.stop_reason
        elif name == "message_stop":
            expected.complete = True
        elif name == "error":
            error = assembler.error
            expected.error_type = error.get("type") if isinstance(error, dict) else "error"
    assert exchange.usage == expected.usage
    assert (exchange.response_id, exchange.response_model, exchange.stop_reason,
            exchange.complete, exchange.error_type) == \
        (expected.response_id, expected.response_model, expected.stop_reason,
         expected.complete, expected.error_type)
