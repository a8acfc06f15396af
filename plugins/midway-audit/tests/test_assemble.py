"""Stream reassembly edge cases, fed real event sequences from the fake upstream."""

from __future__ import annotations

import orjson

from midway.fake_upstream import Reply, build_message, stream_events
from midway.sse import SSEParser
from midway_audit.assemble import StreamAssembler


def assemble(reply: Reply, limit: int = 10**6, cut: int | None = None) -> dict:
    message = build_message({"model": "claude-sonnet-4-6"}, reply, b"{}")
    raw = b"".join(stream_events(message, reply))
    assembler = StreamAssembler(limit)
    events = SSEParser().feed(raw)
    for event in events[:cut]:
        assembler.feed(event.name, event.json())
    return assembler.message()


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
    assembler = StreamAssembler(1000)
    for event in SSEParser().feed(b"".join(stream_events(message, Reply())[:3])):
        assembler.feed(event.name, event.json())
    assembler.feed("error", {"type": "error", "error": {"type": "overloaded_error",
                                                        "message": "Overloaded"}})
    message = assembler.message()
    assert message["error"]["type"] == "overloaded_error"
    assert message["incomplete"] is True
