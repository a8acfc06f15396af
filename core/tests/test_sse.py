"""SSE framing and usage reading survive any split of the byte stream (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from midway.exchange import Usage
from midway.observe import StreamObserver
from midway.sse import SSEParser, encode_event
from midway.testing import make_exchange

EVENTS = [
    encode_event("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "model": "claude-opus-4-8", "usage": {
            "input_tokens": 110, "cache_creation_input_tokens": 50,
            "cache_read_input_tokens": 20, "output_tokens": 1,
            "cache_creation": {"ephemeral_5m_input_tokens": 30,
                               "ephemeral_1h_input_tokens": 20}}}}),
    encode_event("ping", {"type": "ping"}),
    encode_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
        "type": "text_delta", "text": "naïve café — 日本語 🎉 \\n\n"}}),
    encode_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                   "usage": {"output_tokens": 40}}),
    encode_event("message_delta", {"type": "message_delta", "delta": {},
                                   "usage": {"output_tokens": 47}}),
    encode_event("message_stop", {"type": "message_stop"}),
]
STREAM = b"".join(EVENTS)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=60))
def test_any_split_gives_the_same_events_and_usage(cuts):
    parser = SSEParser()
    events = []
    exchange = make_exchange()
    observer = StreamObserver(exchange)
    for piece in split(STREAM, cuts):
        events.extend(parser.feed(piece))
        observer.feed(piece)
    assert [e.raw for e in events] == EVENTS
    assert parser.pending == b""
    usage: Usage = exchange.usage
    assert (usage.input_tokens, usage.output_tokens) == (110, 47)
    assert (usage.cache_creation_5m_input_tokens, usage.cache_creation_1h_input_tokens) == (30, 20)
    assert usage.cache_read_input_tokens == 20
    assert exchange.stop_reason == "tool_use"
    assert exchange.response_model == "claude-opus-4-8"


def test_one_byte_at_a_time():
    parser = SSEParser()
    events = [e for i in range(len(STREAM)) for e in parser.feed(STREAM[i:i + 1])]
    assert [e.raw for e in events] == EVENTS
    assert events[2].json()["delta"]["text"].startswith("naïve café")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_crlf_and_cr_line_ends(cuts):
    crlf = STREAM.replace(b"\n", b"\r\n")
    cr = STREAM.replace(b"\n", b"\r")
    for data in (crlf, cr):
        parser = SSEParser()
        events = [e for piece in split(data, cuts) for e in parser.feed(piece)]
        if data is cr:
            # A final lone CR may still be the first half of a CRLF: it completes on the next byte.
            events += parser.feed(b"x")
        assert [e.name for e in events] == [
            "message_start", "ping", "content_block_delta", "message_delta", "message_delta",
            "message_stop"]
        assert b"".join(e.raw for e in events) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 3000), max_size=20))
def test_garbage_never_crashes_and_never_invents_usage(data, cuts):
    parser = SSEParser()
    exchange = make_exchange()
    observer = StreamObserver(exchange)
    total = b""
    for piece in split(data, cuts):
        total += b"".join(e.raw for e in parser.feed(piece))
        observer.feed(piece)
    # Nothing is lost or invented: emitted events plus the pending tail are the input.
    assert total + parser.pending == data
    assert exchange.usage.output_tokens == 0 or b"usage" in data


def test_comments_unknown_events_and_multiline_data():
    parser = SSEParser()
    raw = b": keep-alive\n\nevent: future\ndata: line1\ndata: line2\nid: 7\n\n"
    events = parser.feed(raw)
    assert [e.name for e in events] == [None, "future"]
    assert events[1].data == "line1\nline2"
    assert b"".join(e.raw for e in events) == raw


# -- the usage-only observer's reading: runs of content events, their text unparsed -----------

def _delta(delta: dict[str, object], index: int = 0) -> bytes:
    return encode_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": delta})


TEXTS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
# (an event's bytes, whether it is in Anthropic's own shape)
CONTENT_EVENTS = st.one_of(
    TEXTS.map(lambda t: (_delta({"type": "text_delta", "text": t}), True)),
    TEXTS.map(lambda t: (_delta({"type": "thinking_delta", "thinking": t}, 3), True)),
    TEXTS.map(lambda t: (_delta({"type": "input_json_delta", "partial_json": t}, 12), True)),
    TEXTS.map(lambda t: (_delta({"type": "signature_delta", "signature": t}), False)),
    TEXTS.map(lambda t: (_delta({"text": t, "type": "text_delta"}), False)),  # key order
    TEXTS.map(lambda t: (b"event: content_block_delta\ndata: "
                         b'{"type": "content_block_delta", "index": 0, "delta": {"type": '
                         b'"text_delta", "text": "' + t.encode() + b'"}}\n\n', False)),
    st.just((encode_event("content_block_start", {
        "type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": "x"}}), True)),
    st.just((encode_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
             True)),
    st.just((encode_event("ping", {"type": "ping"}), True)),
    st.just((b"event: content_block_delta\ndata: not json\n\n", False)),
    st.just((b"event: ping\ndata: xevent: content_block_delta\ndata: " +
             _delta({"type": "text_delta", "text": "hidden"}).split(b"data: ", 1)[1], False)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(CONTENT_EVENTS, max_size=8))
def test_a_runs_text_is_what_parsing_each_event_counts(events: list[tuple[bytes, bool]]
                                                       ) -> None:
    from midway.observe import delta_text, run_text

    run = b"".join(e for e, _ in events)
    exact = sum(delta_text(e.json()) for e in SSEParser().feed(run)
                if e.name == "content_block_delta")
    counted = run_text(run)
    assert counted is None or counted == exact
    if all(anthropic for _, anthropic in events):
        assert counted == exact  # Anthropic's own shape is never parsed one by one


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([*EVENTS, b"event: content_block_stop\ndata: {}\n\n",
                                 b"\n", b": comment\n\n"]), max_size=10),
       st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_feed_runs_returns_every_byte_and_parses_what_is_not_skipped(
        events: list[bytes], cuts: list[int]) -> None:
    from midway.observe import SKIP_PREFIXES

    stream = b"".join(events)
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    runs, plain = SSEParser(), SSEParser()
    out: list[bytes] = []
    for piece in pieces:
        items = runs.feed_runs(piece, SKIP_PREFIXES)
        parsed = [i for i in items if not isinstance(i, bytes)]
        assert [(e.name, e.data, e.raw) for e in parsed] == \
            [(e.name, e.data, e.raw) for e in plain.feed(piece) if b"\r" in e.raw or
             not e.raw.startswith(SKIP_PREFIXES)]
        out += [i if isinstance(i, bytes) else i.raw for i in items]
    assert b"".join(out) + runs.pending == stream
