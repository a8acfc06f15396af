"""The OpenAI → Anthropic stream translator under arbitrary splits of the vendor's bytes."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from fake_openai import OpenAIReply, ToolCall, stream_chunks

from midway.sse import SSEParser
from midway_router.openai_translate import OpenAIStreamTranslator, ToolNames

LONG = "mcp__" + "x" * 70


def vendor_bytes(reply: OpenAIReply, calls: list[ToolCall], done: bool = True) -> bytes:
    chunks = stream_chunks(reply, calls, 7, include_usage=True)
    data = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    return data + (b"data: [DONE]\n\n" if done else b"")


def translate(data: bytes, cuts: list[int], names: ToolNames | None = None) -> bytes:
    translator = OpenAIStreamTranslator(names or ToolNames(), ["END"], "gpt-fake-1")
    out = []
    start = 0
    for cut in [*cuts, len(data)]:
        out.append(translator.feed(data[start:cut]))
        start = cut
    out.append(translator.close())
    return b"".join(out)


def replay(stream: bytes) -> dict[str, Any]:
    """Check the Anthropic stream grammar and rebuild the message it carries."""
    events = [(e.name, orjson.loads(e.data)) for e in SSEParser().feed(stream)]
    names = [n for n, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    message = events[0][1]["message"]
    content: list[dict[str, Any]] = []
    open_index = None
    json_parts: dict[int, list[str]] = {}
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None, "a block started while another was open"
            assert data["index"] == len(content)
            open_index = data["index"]
            content.append(dict(data["content_block"]))
            json_parts[open_index] = []
        elif name == "content_block_delta":
            assert data["index"] == open_index
            delta = data["delta"]
            if delta["type"] == "text_delta":
                content[open_index]["text"] += delta["text"]
            else:
                assert delta["type"] == "input_json_delta"
                json_parts[open_index].append(delta["partial_json"])
        else:
            assert name == "content_block_stop"
            assert data["index"] == open_index
            open_index = None
    assert open_index is None
    for index, parts in json_parts.items():
        if content[index]["type"] == "tool_use":
            content[index]["input"] = orjson.loads("".join(parts) or "{}")
    message["content"] = content
    delta = events[-2][1]
    message.update(delta["delta"])
    message["usage"] = delta["usage"]
    return dict(message)


CALLS = [ToolCall("get_weather", '{"city": "Zürich", "unit": "°C"}', id="call_a"),
         ToolCall(LONG[:55] + "_" + "0" * 8, '{"q": "naïve — ok"}', id="call_b"),
         ToolCall("get_time", "", id="call_c")]


def expected_message() -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "model": "gpt-fake-1",
            "id": "msg_chatcmpl-fake7", "stop_reason": "tool_use", "stop_sequence": None,
            "content": [{"type": "text", "text": "Voilà — three tools 🛠"},
                        {"type": "tool_use", "id": "call_a", "name": "get_weather",
                         "input": {"city": "Zürich", "unit": "°C"}},
                        {"type": "tool_use", "id": "call_b", "name": LONG[:55] + "_" + "0" * 8,
                         "input": {"q": "naïve — ok"}},
                        {"type": "tool_use", "id": "call_c", "name": "get_time", "input": {}}],
            "usage": {"input_tokens": 25, "output_tokens": 12, "cache_read_input_tokens": 0,
                      "cache_creation_input_tokens": 0}}


@pytest.mark.parametrize("interleave", [False, True])
def test_every_byte_split(interleave: bool) -> None:
    data = vendor_bytes(OpenAIReply(content="Voilà — three tools 🛠", interleave=interleave,
                                    arg_fragments=5), CALLS)
    whole = translate(data, [])
    message = replay(whole)
    assert message == expected_message()
    # One byte per feed (UTF-8 characters cut in half included) gives the same bytes out.
    assert translate(data, list(range(1, len(data)))) == whole


@pytest.mark.parametrize("seed", range(30))
def test_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    reply = OpenAIReply(content="Voilà — three tools 🛠" if seed % 3 else None,
                        interleave=seed % 2 == 0, arg_fragments=rng.randint(1, 9),
                        text_chunks=rng.randint(1, 6))
    calls = CALLS[:rng.randint(1, 3)]
    data = vendor_bytes(reply, calls)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
    out = translate(data, cuts)
    assert out == translate(data, [])
    message = replay(out)
    want = expected_message()["content"][:1 + len(calls)]
    assert message["content"] == (want if reply.content else want[1:])


def test_text_after_a_tool_call_is_held_until_the_calls_end() -> None:
    chunk = {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {}}]}

    def delta(d: dict[str, Any], finish: str | None = None) -> bytes:
        c = {**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(c) + b"\n\n"

    data = b"".join([
        delta({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "a"}}]}),
        delta({"tool_calls": [{"index": 1, "id": "call_2"}]}),  # its name comes later
        delta({"content": "late text"}),
        delta({"tool_calls": [{"index": 1, "function": {"name": "b", "arguments": "{\"x\""}}]}),
        delta({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        delta({"tool_calls": [{"index": 1, "function": {"name": "b", "arguments": ":1}"}}]}),
        delta({}, "tool_calls"), b"data: [DONE]\n\n"])
    message = replay(translate(data, []))
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "a", "input": {}},
        {"type": "tool_use", "id": "call_2", "name": "b", "input": {"x": 1}},
        {"type": "text", "text": "late text"}]
    assert message["stop_reason"] == "tool_use"


def test_long_tool_names_are_restored() -> None:
    names = ToolNames([LONG])
    short = names.short(LONG)
    assert len(short) == 64 and short != LONG and names.long(short) == LONG
    data = vendor_bytes(OpenAIReply(content=None), [ToolCall(short, "{}", id="call_x")])
    message = replay(translate(data, [], names))
    assert message["content"] == [{"type": "tool_use", "id": "call_x", "name": LONG,
                                   "input": {}}]


def test_missing_done_after_finish_still_completes() -> None:
    data = vendor_bytes(OpenAIReply(content="fine"), [], done=False)
    assert replay(translate(data, []))["content"] == [{"type": "text", "text": "fine"}]


@pytest.mark.parametrize("data", [b"", b"data: {\"id\": \"x\", \"choices\": []}\n\n",
                                  b"data: {\"id\": \"x\", \"choices\": [{\"delta\": {\"content\""
                                  b": \"half\"}}]}\n\n"])
def test_a_stream_that_stops_early_ends_with_an_error_event(data: bytes) -> None:
    events = list(SSEParser().feed(translate(data, [])))
    assert events[-1].name == "error"
    assert "message_stop" not in [e.name for e in events]
    starts = sum(e.name == "content_block_start" for e in events)
    assert starts == sum(e.name == "content_block_stop" for e in events)
