"""Stream reassembly edge cases, fed real event sequences from the fake upstream."""

from __future__ import annotations

import orjson

from midway.assemble import MessageAssembler
from midway.fake_upstream import Reply, build_message, stream_events
from midway.sse import SSEParser
from midway_audit.assemble import EventLog, reassemble, recorded


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
