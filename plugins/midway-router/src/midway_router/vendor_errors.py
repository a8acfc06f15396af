"""Another vendor's error wording, told in Anthropic's: Claude Code recovers from some refusals
on its own — it compacts the conversation on "prompt is too long", lowers ``max_tokens``,
drops thinking blocks whose signature is refused, drops ``cache_control``, thinking or a beta
it was refused — and it recognises them by Anthropic's wording. Each refusal a vendor words
its own way is given Anthropic's wording and a stable ``capability_rejected: <capability>``
token (docs/router-translation.md, "Errors Claude Code recovers from", lists them).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs

MARK = "capability_rejected"
# The statuses a refusal of the request's content comes with (a 429 about "too many tokens"
# per minute is a rate limit, not a prompt too long).
REFUSAL_STATUSES = frozenset({400, 413, 422})


@attrs.frozen
class Rejection:
    """One kind of refusal: how vendors word it, and how Anthropic does."""

    capability: str
    pattern: re.Pattern[str]  # searched in the vendor's message (and its error code)
    wording: Callable[[str], str]  # the vendor message → Anthropic's wording of it


def _numbers(message: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d{3,}", message.replace(",", ""))]


def _too_long(message: str) -> str:
    if message.lower().startswith("prompt is too long"):
        return message
    # OpenAI: "maximum context length is 128000 tokens. However, your messages resulted in
    # 130000 tokens" → Anthropic's "prompt is too long: 130000 tokens > 128000 maximum", the
    # numbers Claude Code reads to know how much to compact.
    limit = re.search(r"(?:maximum context length|context window|limit) (?:is|of) (\d+)",
                      message)
    found = re.search(r"(?:resulted in|requested|contains|have|has) (\d+) tokens", message)
    if limit and found:
        return f"prompt is too long: {found.group(1)} tokens > {limit.group(1)} maximum"
    return f"prompt is too long: {message}"


def _max_tokens(message: str) -> str:
    if message.startswith("max_tokens:"):
        return message
    numbers = _numbers(message)
    if len(numbers) >= 2:
        asked, most = max(numbers), min(numbers)
        return (f"max_tokens: {asked} > {most}, which is the maximum allowed number of output "
                f"tokens: {message}")
    return f"max_tokens: {message}"


def _prefixed(anthropic: str, keep: str) -> Callable[[str], str]:
    """Anthropic's phrase before the vendor's message, unless the message names ``keep``
    already (Bedrock relays Anthropic's own wording: it stays as it is)."""
    def wording(message: str) -> str:
        return message if keep.lower() in message.lower() else f"{anthropic}: {message}"
    return wording


# In order: the first that matches names the capability. Patterns are vendors' wordings seen
# from OpenAI, Azure OpenAI, vLLM, LiteLLM-fronted models, Bedrock's ValidationException.
REJECTIONS: tuple[Rejection, ...] = (
    Rejection("prompt_too_long", re.compile(
        r"context_length_exceeded|prompt is too long|maximum context length|context window"
        r"|input is too long|reduce the length of the (?:messages|input)",
        re.I), _too_long),
    Rejection("max_tokens", re.compile(
        r"max_tokens is too large|max_(?:completion_)?tokens.{0,40}(?:exceed|too large|at most|"
        r"maximum|must be less)|supports at most \d+ completion tokens", re.I), _max_tokens),
    Rejection("thinking_signature", re.compile(
        r"signature.{0,40}thinking|thinking.{0,40}signature", re.I),
        _prefixed("Invalid `signature` in `thinking` block", "`signature`")),
    Rejection("cache_control", re.compile(r"cache_control|prompt caching", re.I),
              _prefixed("cache_control is not supported", "cache_control")),
    Rejection("thinking", re.compile(
        r"thinking.{0,60}(?:not supported|unsupported|not permitted|not allowed)"
        r"|(?:unsupported|unrecognized|unknown).{0,60}(?:thinking|reasoning_effort|reasoning)"
        r"|reasoning_effort.{0,60}(?:not supported|unsupported)", re.I),
        _prefixed("thinking is not supported on this model", "thinking is not supported")),
    Rejection("anthropic_beta", re.compile(
        r"anthropic[-_]beta|unsupported beta|invalid beta", re.I),
        _prefixed("Unexpected value(s) for the `anthropic-beta` header", "anthropic-beta")),
    Rejection("tools", re.compile(
        r"(?:does not support|doesn't support|not support(?:ed)?).{0,30}"
        r"(?:tools|tool use|tool calling|function calling|tool_choice)"
        r"|tool_choice.{0,40}(?:not supported|unsupported)", re.I),
        _prefixed("tools are not supported on this model", "tools are not supported")),
    Rejection("images", re.compile(
        r"(?:does not support|doesn't support|not support(?:ed)?).{0,30}(?:image|vision)"
        r"|image input.{0,30}not supported", re.I),
        _prefixed("images are not supported on this model", "images are not supported")),
)


def in_anthropic_words(message: str, status: int, code: str = "") -> tuple[str, str | None]:
    """``message`` (a vendor's refusal with HTTP ``status``, and its error ``code`` if any) in
    Anthropic's wording with ``(capability_rejected: <capability>)`` appended, and the
    capability; the message unchanged and ``None`` when it is no refusal of a known
    capability."""
    # a message that has it already came from another midway in front of the vendor
    if status not in REFUSAL_STATUSES or MARK in message:
        return message, None
    haystack = f"{code} {message}"
    for rejection in REJECTIONS:
        if rejection.pattern.search(haystack):
            worded = rejection.wording(message)
            return f"{worded} ({MARK}: {rejection.capability})", rejection.capability
    return message, None
