"""Stream reassembly edge cases, fed real event sequences from the fake upstream."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from midway.assemble import MessageAssembler
from midway.fake_upstream import Reply, build_message, stream_events
from midway.sse import SSEParser
from midway_audit.assemble import EventLog, _join_text_deltas, reassemble, recorded


def assemble(reply: Reply, limit: int = 10**6, cut: int | None = None) -> dict:
    message = build_message({"model": "claude-sonnet-4-6"}, reply, b"{}")
    raw = b"".join(stream_events(message, reply))
    assembler = MessageAssembler(limit)
    events = SSEParser().feed(raw)
    for event in events[:cut]:
        assembler.feed_event(event)
    return recorded(assembler)


def test_every_block_type_in_order():
    blocks = [{"type": "thinking", "thinking": "plan ünïcode 🙂", "signature": "SIG"},
              {"type": "text", "text": "answer"},
              {"type": "tool_use", "name": "Edit", "input": {"a": {"b": [1, "two"]}}},
              {"type": "tool_use", "name": "NoArgs", "input": {}},
              {"type": "redacted_thinking", "data": "opaque"}]
    message = assemble(Reply(content=blocks, text_chunks=7, json_fragments=9))
    content = message["content"]
    assert [b["type"] for b in content] == ["thinking", "text", "tool_use", "tool_use",
                                            "redacted_thinking"]
    assert content[0] == {"type": "thinking", "thinking": "plan ünïcode 🙂", "signature": "SIG"}
    assert content[2]["input"] == {"a": {"b": [1, "two"]}}
    assert content[3]["input"] == {}
    assert content[4]["data"] == "opaque"
    assert message["stop_reason"] == "tool_use" and "incomplete" not in message


def test_cut_stream_keeps_partial_json_and_is_marked():
    reply = Reply(content=[{"type": "tool_use", "name": "Bash", "input": {"command": "ls"}}],
                  json_fragments=3)
    message = assemble(reply, cut=6)  # start, ping, block start, "", 2 of 3 fragments
    assert message["incomplete"] is True
    partial = message["content"][0]["input"]["_partial_json"]
    assert orjson.dumps({"command": "ls"}).decode().startswith(partial)


def test_memory_is_bounded_and_truncation_marked():
    message = assemble(Reply(content=[{"type": "text", "text": "y" * 10_000}],
                             text_chunks=100), limit=1000)
    assert message["truncated"] is True
    assert len(message["content"][0]["text"]) <= 1000


def test_error_event_is_kept():
    message = build_message({"model": "m"}, Reply(), b"{}")
    assembler = MessageAssembler(1000)
    assembler.feed_bytes(b"".join(stream_events(message, Reply())[:3]))
    assembler.feed("error", {"type": "error", "error": {"type": "overloaded_error",
                                                        "message": "Overloaded"}})
    message = recorded(assembler)
    assert message["error"]["type"] == "overloaded_error"
    assert message["incomplete"] is True


def _through_log(raw: bytes, limit: int = 10**6) -> dict:
    log = EventLog.from_sse(raw, limit)
    return reassemble(log.data, limit, log.truncated)


def test_the_writers_short_cut_gives_what_the_full_parser_gives():
    """EventLog.from_sse reads Anthropic's usual framing in one C call, anything else with the
    full SSE parser: both must rebuild the same message, and cuts mark it truncated."""
    blocks = [{"type": "thinking", "thinking": "plan ünïcode 🙂", "signature": "SIG"},
              {"type": "text", "text": "line one\nline two \"quoted\" " * 20},
              {"type": "tool_use", "name": "Edit", "input": {"a": {"b": [1, "two"]}}}]
    reply = Reply(content=blocks, text_chunks=13, json_fragments=5)
    message = build_message({"model": "claude-sonnet-4-6"}, reply, b"{}")
    raw = b"".join(stream_events(message, reply))
    assembler = MessageAssembler(10**6)
    assembler.feed_bytes(raw)
    expected = recorded(assembler)
    assert _through_log(raw) == expected  # the short cut
    variants = {
        "crlf": raw.replace(b"\n", b"\r\n"),
        "comments": raw.replace(b"event: ping\n", b": keep-alive\n\nevent: ping\n"),
        "two data lines": raw.replace(b'data: {"type":"message_stop"}',
                                      b'data: {"type":\ndata: "message_stop"}'),
    }
    for name, variant in variants.items():
        assert _through_log(variant) == expected, name
    cut = _through_log(raw, limit=100)
    assert cut["truncated"] is True
    assert len(cut["content"][1]["text"]) + len(cut["content"][0]["thinking"]) <= 100
    assert cut["stop_reason"] == expected["stop_reason"]  # events past the cut still count


def _one_by_one(data: list[str], limit: int) -> dict:
    """What reassemble gave before it joined text deltas: each event parsed and fed alone."""
    assembler = MessageAssembler(limit)
    assembler.feed_all([_parse_or_none(text) for text in data])
    return recorded(assembler)


def _parse_or_none(text: str):
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _delta(index: int, text: str) -> str:
    return orjson.dumps({"type": "content_block_delta", "index": index,
                         "delta": {"type": "text_delta", "text": text}}).decode()


_START = orjson.dumps({"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3}}}).decode()
_END = ['{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}',
        '{"type":"message_stop"}']


def _block_starts(i: int) -> list[str]:
    return [f'{{"type":"content_block_start","index":{i},"content_block":{{"type":"text",'
            f'"text":""}}}}',
            f'{{"type":"content_block_start","index":{i},"content_block":{{"type":"text",'
            f'"text":"pre\\n"}}}}',
            f'{{"type":"content_block_start","index":{i},"content_block":{{"type":"text",'
            f'"text":"","citations":[]}}}}',
            f'{{"type":"content_block_start","index":{i},"content_block":{{"type":"thinking",'
            f'"thinking":""}}}}']


def _deltas(i: int) -> list[str]:
    head = f'{{"type":"content_block_delta","index":{i},"delta":'
    return [*(_delta(i, t) for t in ("word ", 'say "hi"\\', "ünï 🙂", "\n\t", "")),
            head + '{"type":"text_delta","text":"\\ud83d"}}',  # a pair split in two
            head + '{"type":"text_delta","text":"\\ude00"}}',
            head + '{"type":"text_delta","text":"a","x":"y"}}',  # a field more
            head + '{"type":"text_delta","text":"raw\tab"}}',  # not JSON
            head + '{"type":"thinking_delta","thinking":"t"}}',
            head + '{"type":"citations_delta","citation":{"cited_text":"c"}}}',
            head + '{"type":"text_delta","text":"x"},"y":"z"}']


_ODD = ['{"type":"ping"}', '{"type":', '{"type":"mystery","x":"y"}',
        '{"type":"content_block_stop","index":0}', _delta(2, "late ")]


@st.composite
def _streams(draw: st.DrawFn) -> list[str]:
    """Mostly well-formed streams (blocks of deltas, some of them odd), now and then an odd
    event anywhere."""
    data = [_START]
    for i in range(draw(st.integers(0, 3))):
        data.append(draw(st.sampled_from(_block_starts(i))))
        data += draw(st.lists(st.sampled_from(_deltas(i) + _deltas(i)[:1] * 6), max_size=12))
        if draw(st.booleans()) or i == 0:
            data.append(f'{{"type":"content_block_stop","index":{i}}}')
    data += _END[:draw(st.integers(0, 2))]
    for _ in range(draw(st.integers(0, 2))):
        data.insert(draw(st.integers(0, len(data))), draw(st.sampled_from(_ODD)))
    return data


@settings(max_examples=500, deadline=None)
@given(_streams(), st.sampled_from([10**6, 12]))
def test_joined_text_deltas_give_what_one_by_one_gives(data: list[str], limit: int):
    """reassemble feeds each run of a block's text deltas as one delta: whatever the events
    (escapes, split surrogate pairs, extra fields, other deltas of the same block, blocks
    not open, text past the limit, not JSON), the message is the one feeding them one by one
    makes."""
    assert reassemble(data, limit, False) == _one_by_one(data, limit)


def test_a_stream_of_text_deltas_is_joined_into_one():
    data = [_START, '{"type":"content_block_start","index":0,"content_block":'
                    '{"type":"text","text":""}}',
            *(_delta(0, f"w{n} ") for n in range(50)), '{"type":"content_block_stop","index":0}',
            '{"type":"message_stop"}']
    text = "[\n" + ",\n".join(data) + "\n]"
    joined = _join_text_deltas(text, 0)
    assert joined.count("\n") == 5  # the deltas went into the block's start
    assert reassemble(data, 10**6, False) == _one_by_one(data, 10**6)
    assert reassemble(data, 10**6, False)["content"] == [
        {"type": "text", "text": "".join(f"w{n} " for n in range(50))}]
