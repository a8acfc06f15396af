"""What makes two requests the same: a canonical hash of everything that determines the answer.

In the key: the tenant, model, system, tools, tool_choice, thinking, sampling parameters,
max_tokens, stop sequences, messages (and any other body field), ``anthropic-version`` and
``anthropic-beta``. Left out: ``stream`` (a stream and a JSON request share an entry),
``metadata`` (a user id for abuse tracking, not an input) and ``cache_control`` markers
(Anthropic's prompt-cache hints change the price, not the answer) — only where Anthropic
defines them: on a block of ``system``, a tool of ``tools`` and a content block of a message.
A ``cache_control`` anywhere else (a property of a tool's ``input_schema``, a tool's input) is
data like any other and stays in the key. A string ``system`` or
message ``content`` is the same as one text block holding that string.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import orjson
from multidict import CIMultiDict

from midway import Principal, Request

# Body fields that do not change the answer.
_IGNORED_FIELDS = ("stream", "metadata")
_KEY_VERSION = 2  # 2: cache_control kept where it is not a marker


@attrs.define(frozen=True)
class CacheKeys:
    """The keys of one request. ``partition`` and ``prompt`` are set when it may be served
    semantically: ``partition`` hashes everything but the last user turn, whose text is
    ``prompt``."""

    exact: str
    tenant: str
    partition: str | None = None
    prompt: str | None = None


def tenant_of(principal: Principal, share: str) -> str:
    """Who may share entries: the principal, its team, or everyone."""
    if share == "global":
        return "*"
    if share == "team" and principal.team:
        return f"team:{principal.team}"
    return f"principal:{principal.id}"


def request_keys(request: Request, principal: Principal, share: str) -> CacheKeys | None:
    """The keys of a Messages request, or ``None`` when it is not cacheable."""
    if not request.is_messages:
        return None
    body = request.json
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    canonical = {k: v for k, v in body.items() if k not in _IGNORED_FIELDS}
    if isinstance(canonical.get("system"), str):
        canonical["system"] = [{"type": "text", "text": canonical["system"]}]
    for field in ("system", "tools"):
        if isinstance(canonical.get(field), list):
            canonical[field] = [_unmarked(item) for item in canonical[field]]
    canonical["messages"] = [_message(m) for m in canonical["messages"]]
    tenant = tenant_of(principal, share)
    head = {"v": _KEY_VERSION, "tenant": tenant, **_protocol(request.headers)}
    exact = _digest({**head, "body": canonical})
    prompt = last_user_text(canonical["messages"])
    if prompt is None:
        return CacheKeys(exact=exact, tenant=tenant)
    context = {**canonical, "messages": canonical["messages"][:-1]}
    partition = _digest({**head, "layer": "semantic", "body": context})
    return CacheKeys(exact=exact, tenant=tenant, partition=partition, prompt=prompt)


def last_user_text(messages: list[Any]) -> str | None:
    """The last turn's text when it is a user turn made only of text (no tool_result, image or
    document: those are served by the exact layer only)."""
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    content = last.get("content")
    if not isinstance(content, list) or not content:
        return None
    texts = []
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "text":
            return None
        text = block.get("text")
        if not isinstance(text, str):
            return None
        texts.append(text)
    joined = "\n".join(texts).strip()
    return joined or None


def _protocol(headers: CIMultiDict[str]) -> dict[str, Any]:
    betas = {b.strip() for value in headers.getall("anthropic-beta", [])
             for b in value.split(",") if b.strip()}
    return {"version": headers.get("anthropic-version", ""), "beta": sorted(betas)}


def _message(message: Any) -> Any:
    """A message with string content as one text block, its blocks' markers stripped."""
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": [{"type": "text", "text": content}]}
    if isinstance(content, list):
        return {**message, "content": [_unmarked(block) for block in content]}
    return message


def _unmarked(item: Any) -> Any:
    """A block or tool without its own ``cache_control`` marker (its contents untouched)."""
    if isinstance(item, dict) and "cache_control" in item:
        return {k: v for k, v in item.items() if k != "cache_control"}
    return item


def _digest(doc: Any) -> str:
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()
