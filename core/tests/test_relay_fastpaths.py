"""The relay's shortcuts give exactly what the general code gives."""

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from midway import sse
from midway.exchange import Exchange
from midway.plugins import Impl
from midway.proxy import _chunk_caller
from midway.sse import SSEEvent, SSEParser, parse_block
from midway.testing import make_exchange

line_bytes = st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)


@given(line_bytes, line_bytes)
def test_anthropic_shaped_blocks_parse_as_the_general_parser_does(name, data):
    block = b"event: " + name + b"\ndata: " + data
    fast = parse_block(block, block + b"\n\n")
    general = parse_block(b":comment\n" + block, block + b"\n\n")  # takes the general path
    assert (fast.name, fast.data, fast.raw) == (general.name, general.data, general.raw)


@given(st.lists(st.sampled_from([b"event: content_block_delta\ndata: {}\n\n",
                                 b"event: message_delta\ndata: {\"a\":1}\n\n",
                                 b"event: ping\r\ndata: {}\r\n\r\n", b"data: x\n\n",
                                 b": comment\n\n"]), max_size=12),
       st.integers(min_value=1, max_value=7))
def test_skipping_parser_gives_the_unskipped_events(pieces, step):
    skip = (b"event: content_block", b"event: ping")
    stream = b"".join(pieces)
    full, skipped = SSEParser(), SSEParser()
    expected, got = [], []
    for i in range(0, len(stream), step):
        expected += [e.raw for e in full.feed(stream[i:i + step])
                     if not e.raw.startswith(skip)]
        got += [e.raw for e in skipped.feed(stream[i:i + step], skip)]
    assert got == expected
    assert full.pending == skipped.pending


MARKED_PIECES = [
    b"event: content_block_delta\ndata: {}\n\n",
    b'event: content_block_delta\ndata: {"text":"event: message_stop error"}\n\n',
    b"event: message_start\ndata: {\"a\":1}\n\n", b"event: message_delta\ndata: {}\n\n",
    b"event: message_stop\ndata: {}\n\n", b"event:error\ndata: {}\n\n",
    b"id: 1\nevent: message_delta\ndata: {}\n\n", b"event: ping\r\ndata: {}\r\n\r\n",
    b"event: ping\ndata: {}\n\n", b"data: x\n\n", b": comment\n\n", b"\n", b"\n\n",
    b"event: other\ndata: message_\n\n",
]


@given(st.lists(st.sampled_from(MARKED_PIECES), max_size=30), st.integers(min_value=1,
                                                                         max_value=400),
       st.sampled_from([0, 16, 2048]))
def test_marked_events_are_those_the_skipping_parser_gives(pieces, step, searched):
    skip, markers = (b"event: content_block", b"event: ping"), (b"message_", b"error")
    stream = b"".join(pieces)
    full, marked = SSEParser(), SSEParser()
    expected, got = [], []
    saved, sse.SEARCHED_SIZE = sse.SEARCHED_SIZE, searched
    try:
        for i in range(0, len(stream), step):
            expected += [e.raw for e in full.feed(stream[i:i + step], skip)]
            got += [e.raw for e in marked.feed_marked(stream[i:i + step], markers, skip)]
    finally:
        sse.SEARCHED_SIZE = saved
    assert full.pending == marked.pending
    holding = [raw for raw in expected if any(m in raw for m in markers)]
    assert [raw for raw in got if any(m in raw for m in markers)] == holding
    rest = iter(expected)  # and nothing else but those events, in their order
    assert all(any(raw == e for e in rest) for raw in got)


def test_on_chunk_callers_pass_arguments_by_name():
    exchange: Exchange = make_exchange()
    event = SSEEvent(name="ping", data="{}", raw=b"event: ping\ndata: {}\n\n")
    seen = []

    def both(exchange, event):
        seen.append(("both", exchange, event))

    def reversed_(event, exchange):
        seen.append(("reversed", exchange, event))

    def only_event(event):
        seen.append(("event", None, event))

    def only_exchange(exchange):
        seen.append(("exchange", exchange, None))

    async def async_both(exchange, event):
        seen.append(("async", exchange, event))

    for fn, names in ((both, ("exchange", "event")), (reversed_, ("event", "exchange")),
                      (only_event, ("event",)), (only_exchange, ("exchange",)),
                      (async_both, ("exchange", "event"))):
        call, with_exchange = _chunk_caller(Impl("p", fn, names, False))
        result = call(exchange, event) if with_exchange else call(event)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    assert seen == [("both", exchange, event), ("reversed", exchange, event),
                    ("event", None, event), ("exchange", exchange, None),
                    ("async", exchange, event)]
