"""Anthropic Messages ⇄ OpenAI Chat Completions, as pure functions and one stream translator.

Nothing here does I/O: :mod:`midway_router.openai_adapter` wires these into the core. What maps
to what, and what is lost on the way, is documented in docs/router-translation.md.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import orjson

from midway.errors import STATUS_TYPES, error_body
from midway.sse import SSEParser, encode_event
from midway_router.vendor_errors import REFUSAL_STATUSES, in_anthropic_words

# OpenAI's limit on function names; Anthropic allows longer ones (MCP tools get long).
MAX_TOOL_NAME = 64
_HASH_LEN = 8
_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")

FINISH_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class TranslationError(ValueError):
    """The request holds something the target vendor cannot receive (answered as a 400)."""


class ToolNames:
    """Shortens tool names over 64 characters, deterministically, and maps them back.

    ``short(name)`` keeps the first 55 characters and appends ``_`` and 8 hex digits of the
    name's SHA-256, so the same long name always gets the same short one (across turns) and two
    long names sharing a prefix stay distinct. ``long(short)`` reverses every name seen.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._long: dict[str, str] = {}
        for name in names:
            self.short(name)

    def short(self, name: str) -> str:
        if len(name) <= MAX_TOOL_NAME:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LEN]
        short = f"{name[:MAX_TOOL_NAME - _HASH_LEN - 1]}_{digest}"
        self._long[short] = name
        return short

    def long(self, short: str) -> str:
        return self._long.get(short, short)


def tool_names_of(body: Mapping[str, Any]) -> ToolNames:
    """Every tool name a request mentions: its tools, its tool_choice, and past tool_use blocks."""
    names = ToolNames()
    for tool in _list(body.get("tools")):
        if isinstance(tool, Mapping) and isinstance(tool.get("name"), str):
            names.short(tool["name"])
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and isinstance(choice.get("name"), str):
        names.short(choice["name"])
    for message in _list(body.get("messages")):
        if isinstance(message, Mapping):
            for block in _blocks(message.get("content")):
                if block.get("type") == "tool_use" and isinstance(block.get("name"), str):
                    names.short(block["name"])
    return names


# -- request ----------------------------------------------------------------------------------


def to_openai_request(body: Mapping[str, Any], model: str, names: ToolNames,
                      max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    """An Anthropic Messages request body as a Chat Completions request body."""
    messages: list[dict[str, Any]] = []
    system = _text_of(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in _list(body.get("messages")):
        if isinstance(message, Mapping):
            messages.extend(_message(message, names))
    out: dict[str, Any] = {"model": model, "messages": messages}
    if isinstance(body.get("max_tokens"), int):
        out[max_tokens_field] = body["max_tokens"]
    for field in ("temperature", "top_p"):
        if isinstance(body.get(field), int | float):
            out[field] = body[field]
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and stops:
        out["stop"] = [s for s in stops if isinstance(s, str)]
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = [_tool(t, names) for t in _list(body.get("tools")) if _is_custom_tool(t)]
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, Mapping):
            out.update(_tool_choice(choice, names))
    response_format = _response_format(body.get("output_config"))
    if response_format is not None:
        out["response_format"] = response_format
    return out


def _message(message: Mapping[str, Any], names: ToolNames) -> list[dict[str, Any]]:
    role = message.get("role")
    content = message.get("content")
    if role == "system":
        # Claude Code puts system messages mid-conversation; OpenAI takes them anywhere.
        return [{"role": "system", "content": _text_of(content)}]
    if role == "assistant":
        assistant = _assistant(content, names)
        return [assistant] if assistant is not None else []
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in _blocks(content):
        if block.get("type") == "tool_result":
            # A tool message must follow its assistant message directly: flush text before.
            if parts:
                out.append(_user(parts))
                parts = []
            tool_message, images = _tool_result(block)
            out.append(tool_message)
            parts.extend(images)
        else:
            part = _user_part(block)
            if part is not None:
                parts.append(part)
    if parts:
        out.append(_user(parts))
    return out


def _user(parts: list[dict[str, Any]]) -> dict[str, Any]:
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": "user", "content": parts[0]["text"]}
    return {"role": "user", "content": parts}


def _user_part(block: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": str(block.get("text", ""))}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(block.get("source"))}}
    if kind == "document":
        return _document(block)
    # thinking, server tool results, search results... carry nothing another vendor can use.
    return None


def _image_url(source: Any) -> str:
    if isinstance(source, Mapping):
        if source.get("type") == "base64":
            return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return str(source["url"])
    raise TranslationError("only base64 and url image sources can be sent to this upstream")


def _document(block: Mapping[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, Mapping):
        if source.get("type") == "text":
            return {"type": "text", "text": str(source.get("data", ""))}
        if source.get("type") == "base64":
            data = f"data:{source.get('media_type', 'application/pdf')};base64,{source.get('data')}"
            return {"type": "file", "file": {"filename": str(block.get("title") or "document.pdf"),
                                             "file_data": data}}
    raise TranslationError("only base64 and text documents can be sent to this upstream")


def _tool_result(block: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A tool message, plus the result's images (tool messages hold text only)."""
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        text = content
    else:
        texts = []
        for item in _blocks(content):
            if item.get("type") == "image":
                images.append({"type": "image_url",
                               "image_url": {"url": _image_url(item.get("source"))}})
            elif item.get("type") == "text":
                texts.append(str(item.get("text", "")))
        text = "\n".join(texts)
    if block.get("is_error") is True:
        text = f"Error: {text}"
    message = {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")),
               "content": text}
    return message, images


def _assistant(content: Any, names: ToolNames) -> dict[str, Any] | None:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append({"id": str(block.get("id", "")), "type": "function",
                          "function": {"name": names.short(str(block.get("name", ""))),
                                       "arguments": orjson.dumps(block.get("input", {})
                                                                 ).decode()}})
        # thinking / redacted_thinking: dropped, their signatures mean nothing elsewhere.
    if not texts and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _is_custom_tool(tool: Any) -> bool:
    # Anthropic-defined tools (web_search_2025..., bash_2025..., ...) have a versioned type and
    # run on Anthropic's side or need Anthropic's schema: they cannot be offered elsewhere.
    return isinstance(tool, Mapping) and tool.get("type") in (None, "custom") and \
        isinstance(tool.get("name"), str)


def _tool(tool: Mapping[str, Any], names: ToolNames) -> dict[str, Any]:
    schema = tool.get("input_schema")
    parameters = {k: v for k, v in schema.items() if k != "$schema"} \
        if isinstance(schema, Mapping) else {"type": "object", "properties": {}}
    function: dict[str, Any] = {"name": names.short(tool["name"]), "parameters": parameters}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if tool.get("strict") is True:
        function["strict"] = True
    return {"type": "function", "function": function}


def _tool_choice(choice: Mapping[str, Any], names: ToolNames) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function",
                              "function": {"name": names.short(choice["name"])}}
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def _response_format(config: Any) -> dict[str, Any] | None:
    if not isinstance(config, Mapping):
        return None
    fmt = config.get("format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema" and \
            isinstance(fmt.get("schema"), Mapping):
        return {"type": "json_schema",
                "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}
    return None


# -- response ---------------------------------------------------------------------------------


def message_id(vendor_id: Any) -> str:
    """An Anthropic-looking message id carrying the vendor's id (for tracing), or a new one."""
    clean = _ID_CHARS.sub("", vendor_id)[:48] if isinstance(vendor_id, str) else ""
    return f"msg_{clean or secrets.token_hex(12)}"


def usage_from_openai(usage: Any) -> dict[str, int]:
    """OpenAI usage → Anthropic's. OpenAI's prompt_tokens include cached ones; Anthropic's
    input_tokens exclude them."""
    if not isinstance(usage, Mapping):
        usage = {}
    prompt = _int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    # DeepSeek reports its cache this way instead.
    cached = cached or _int(usage.get("prompt_cache_hit_tokens"))
    return {"input_tokens": max(prompt - cached, 0),
            "output_tokens": _int(usage.get("completion_tokens")),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached}


def stop_reason_of(finish_reason: Any, choice: Mapping[str, Any], stop_sequences: Sequence[str],
                   had_tool_calls: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). Only vLLM-style ``choice.stop_reason`` names the matched
    stop sequence; OpenAI itself does not say, so "stop" becomes end_turn."""
    if had_tool_calls and finish_reason in ("stop", "tool_calls", "function_call", None):
        return "tool_use", None
    if finish_reason == "stop":
        matched = choice.get("stop_reason")
        if isinstance(matched, str) and matched in stop_sequences:
            return "stop_sequence", matched
    if isinstance(finish_reason, str):
        return FINISH_REASONS.get(finish_reason, "end_turn"), None
    return "end_turn", None


def to_anthropic_message(resp: Mapping[str, Any], names: ToolNames,
                         stop_sequences: Sequence[str], model: str) -> dict[str, Any]:
    """A complete ``chat.completion`` as an Anthropic message."""
    choices = resp.get("choices")
    choice: Mapping[str, Any] = choices[0] if isinstance(choices, list) and choices and \
        isinstance(choices[0], Mapping) else {}
    msg = choice.get("message")
    message: Mapping[str, Any] = msg if isinstance(msg, Mapping) else {}
    content: list[dict[str, Any]] = []
    for field in ("content", "refusal"):
        text = message.get(field)
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
    calls = [c for c in _list(message.get("tool_calls")) if isinstance(c, Mapping)]
    for call in calls:
        function = call.get("function")
        fn: Mapping[str, Any] = function if isinstance(function, Mapping) else {}
        content.append({"type": "tool_use", "id": str(call.get("id") or _call_id()),
                        "name": names.long(str(fn.get("name", ""))),
                        "input": _arguments(fn.get("arguments"))})
    stop_reason, stop_sequence = stop_reason_of(choice.get("finish_reason"), choice,
                                                stop_sequences, bool(calls))
    if message.get("refusal") and not calls:
        stop_reason = "refusal"
    return {"id": message_id(resp.get("id")), "type": "message", "role": "assistant",
            "model": resp.get("model") if isinstance(resp.get("model"), str) else model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": usage_from_openai(resp.get("usage"))}


def _arguments(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # Keep what the model produced rather than lose it; the client sees it as the input.
        return {"_arguments": raw}
    return value if isinstance(value, dict) else {"_arguments": value}


def _call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


# -- errors -----------------------------------------------------------------------------------

# OpenAI-compatible vendors answer 503 when a model is overloaded.
_VENDOR_STATUS_TYPES = {**STATUS_TYPES, 503: "overloaded_error"}


def error_type_for(status: int) -> str:
    if status in _VENDOR_STATUS_TYPES:
        return _VENDOR_STATUS_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def to_anthropic_error(status: int, body: bytes) -> bytes:
    """An OpenAI error body (``{"error": {"message", "type", "code"}}``) in Anthropic's format."""
    message = _error_message(body)
    code = ""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping):
        code = str(payload["error"].get("code") or "")
    message, capability = in_anthropic_words(message, status, code)
    error_type = "invalid_request_error" if capability else error_type_for(status)
    return error_body(status, message, error_type=error_type)


def _error_message(body: bytes) -> str:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:2000] or "upstream error"
    if isinstance(payload, Mapping):
        error = payload.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(payload.get("message"), str):
            return str(payload["message"])
    return orjson.dumps(payload).decode()[:2000]


# -- streaming --------------------------------------------------------------------------------


@attrs.define
class _Call:
    """One streamed OpenAI tool call."""

    id: str | None = None
    name: str | None = None
    args: list[str] = attrs.field(factory=list)
    block: int | None = None  # its Anthropic content block index, once started


class OpenAIStreamTranslator:
    """OpenAI ``chat.completion.chunk`` SSE in, Anthropic Messages SSE out, incrementally.

    Anthropic streams one content block at a time (start, deltas, stop), while OpenAI vendors
    may stream several tool calls with interleaved argument fragments. The first tool call is
    streamed live; fragments of later ones (and text arriving after a tool call) are held and
    emitted, each as a complete block, when the choice finishes. For vendors that stream calls
    one after another (OpenAI itself) this only delays calls 2..n to the end of the answer,
    which is where a tool-using turn ends anyway.
    """

    def __init__(self, names: ToolNames, stop_sequences: Sequence[str], model: str) -> None:
        self._names = names
        self._stops = stop_sequences
        self._model = model
        self._parser = SSEParser()
        self._started = False
        self._ended = False  # message_stop or an error event went out
        self._blocks = 0  # Anthropic blocks started so far
        self._open: int | None = None  # index of the open block
        self._open_text = False
        self._tool_phase = False
        self._calls: dict[int, _Call] = {}
        self._held_text: list[str] = []
        self._finish: Any = None
        self._finish_choice: Mapping[str, Any] = {}
        self._finished = False
        self._usage: dict[str, int] | None = None

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._parser.feed(data):
            if self._ended:
                break
            text = event.data.strip()
            if not text:
                continue
            if text == "[DONE]":
                self._end(out)
                break
            try:
                chunk = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue  # comments and keep-alives some vendors send
            if isinstance(chunk, Mapping):
                self._chunk(chunk, out)
        return b"".join(out)

    def close(self) -> bytes:
        out: list[bytes] = []
        if self._parser.pending.strip() and not self._ended:
            # A last event without its blank line: accept it as the vendor meant it.
            out.append(self.feed(b"\n\n"))
        if not self._ended:
            if self._finished:
                self._end(out)
            else:
                self._close_block(out)
                self._error(out, "api_error", "the upstream ended the stream before the answer "
                            "was complete")
        return b"".join(out)

    # -- events in --

    def _chunk(self, chunk: Mapping[str, Any], out: list[bytes]) -> None:
        error = chunk.get("error")
        if error is not None:
            self._close_block(out)
            message = _error_message(orjson.dumps(chunk))
            code = error.get("code") if isinstance(error, Mapping) else None
            status = code if isinstance(code, int) else 500
            # A refusal mid-stream has no HTTP status of its own: its code names it.
            worded, capability = in_anthropic_words(message, 400, str(code or "")) \
                if not isinstance(code, int) or code in REFUSAL_STATUSES else (message, None)
            self._error(out, "invalid_request_error" if capability else
                        error_type_for(status), worded)
            return
        if not self._started:
            self._start(chunk, out)
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = usage_from_openai(chunk["usage"])
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or self._finished:
            return
        choice = choices[0]
        if not isinstance(choice, Mapping):
            return
        delta = choice.get("delta")
        if isinstance(delta, Mapping):
            for field in ("content", "refusal"):
                text = delta.get(field)
                if isinstance(text, str) and text:
                    self._text(text, out)
            for call in _list(delta.get("tool_calls")):
                if isinstance(call, Mapping):
                    self._tool_delta(call, out)
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
            self._finish_choice = choice
            self._flush(out)

    def _start(self, chunk: Mapping[str, Any], out: list[bytes]) -> None:
        self._started = True
        model = chunk.get("model") if isinstance(chunk.get("model"), str) else self._model
        out.append(encode_event("message_start", {"type": "message_start", "message": {
            "id": message_id(chunk.get("id")), "type": "message", "role": "assistant",
            "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}))

    def _text(self, text: str, out: list[bytes]) -> None:
        if self._tool_phase:
            self._held_text.append(text)
            return
        if not self._open_text:
            self._start_block(out, {"type": "text", "text": ""})
            self._open_text = True
        out.append(_delta(self._open, {"type": "text_delta", "text": text}))

    def _tool_delta(self, delta: Mapping[str, Any], out: list[bytes]) -> None:
        index = delta.get("index")
        key = index if isinstance(index, int) else len(self._calls)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = _Call()
        if call.id is None and isinstance(delta.get("id"), str) and delta["id"]:
            call.id = delta["id"]
        function = delta.get("function")
        fragment = ""
        if isinstance(function, Mapping):
            # Names come whole in one chunk; vendors that repeat them must not double them.
            if call.name is None and isinstance(function.get("name"), str) and function["name"]:
                call.name = function["name"]
            if isinstance(function.get("arguments"), str):
                fragment = function["arguments"]
        if call.block is not None:
            if fragment:
                out.append(_delta(call.block, {"type": "input_json_delta",
                                               "partial_json": fragment}))
            return
        if fragment:
            call.args.append(fragment)
        live_tool = self._tool_phase and self._open is not None
        if call.name is not None and not live_tool:
            self._start_call(call, out)

    def _start_call(self, call: _Call, out: list[bytes]) -> None:
        self._close_block(out)
        self._tool_phase = True
        call.id = call.id or _call_id()
        call.block = self._start_block(out, {"type": "tool_use", "id": call.id,
                                             "name": self._names.long(call.name or ""),
                                             "input": {}})
        if call.args:
            out.append(_delta(call.block, {"type": "input_json_delta",
                                           "partial_json": "".join(call.args)}))
            call.args = []

    def _flush(self, out: list[bytes]) -> None:
        """The choice finished: emit held tool calls and text as complete blocks."""
        self._finished = True
        for call in self._calls.values():
            if call.block is None:
                call.name = call.name or ""
                self._start_call(call, out)
        self._close_block(out)
        if self._held_text:
            self._start_block(out, {"type": "text", "text": ""})
            out.append(_delta(self._open, {"type": "text_delta",
                                           "text": "".join(self._held_text)}))
            self._held_text = []
            self._close_block(out)

    def _end(self, out: list[bytes]) -> None:
        if not self._started:
            self._error(out, "api_error", "the upstream sent no answer")
            return
        if not self._finished:
            self._flush(out)
        stop_reason, stop_sequence = stop_reason_of(
            self._finish, self._finish_choice, self._stops,
            any(c.block is not None for c in self._calls.values()))
        usage = self._usage or usage_from_openai(None)
        out.append(encode_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": usage}))
        out.append(encode_event("message_stop", {"type": "message_stop"}))
        self._ended = True

    # -- events out --

    def _start_block(self, out: list[bytes], block: dict[str, Any]) -> int:
        self._close_block(out)
        index = self._blocks
        self._blocks += 1
        self._open = index
        out.append(encode_event("content_block_start", {"type": "content_block_start",
                                                        "index": index, "content_block": block}))
        return index

    def _close_block(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(encode_event("content_block_stop", {"type": "content_block_stop",
                                                           "index": self._open}))
            self._open = None
            self._open_text = False

    def _error(self, out: list[bytes], error_type: str, message: str) -> None:
        out.append(encode_event("error", {"type": "error",
                                          "error": {"type": error_type, "message": message}}))
        self._ended = True


def _delta(index: int | None, delta: dict[str, Any]) -> bytes:
    return encode_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": delta})


# -- helpers ----------------------------------------------------------------------------------


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _blocks(content: Any) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in _list(content) if isinstance(b, Mapping)]


def _text_of(content: Any) -> str:
    """System content (a string or text blocks) as one string."""
    if isinstance(content, str):
        return content
    return "\n\n".join(str(b.get("text", "")) for b in _blocks(content)
                       if b.get("type") == "text")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
