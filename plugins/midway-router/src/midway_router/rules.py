"""What a rule can match on, read once per request, and the matching itself."""

from __future__ import annotations

import fnmatch
from typing import Any

import attrs

from midway.exchange import Exchange
from midway_router.settings import Match, RuleSpec


def _glob(value: str | None, patterns: tuple[str, ...]) -> bool:
    return value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns)


def estimate_tokens(body: Any, size: int) -> int:
    """A cheap input-token estimate: about four bytes of JSON per token, without the base64
    of images and documents (which Anthropic counts far lower than their length)."""
    if not isinstance(body, dict):
        return size // 4
    binary = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for block in content:
                if isinstance(block, dict):
                    source = block.get("source")
                    if isinstance(source, dict) and isinstance(source.get("data"), str):
                        binary += len(source["data"])
    return max(1, (size - binary) // 4)


@attrs.define
class Facts:
    """The request as rules see it."""

    model: str | None
    path: str
    principal_id: str
    principal_name: str
    team: str | None
    headers: Any  # CIMultiDict, case-insensitive
    input_tokens: int
    thinking: bool
    tools: bool
    background: bool

    @classmethod
    def of(cls, exchange: Exchange, background_models: tuple[str, ...]) -> Facts:
        request = exchange.request
        body = request.json if request.body else None
        model = exchange.model
        thinking = False
        tools = False
        if isinstance(body, dict):
            config = body.get("thinking")
            thinking = isinstance(config, dict) and config.get("type") not in (None, "disabled")
            tools = bool(body.get("tools"))
        principal = exchange.principal
        return cls(model=model, path=request.path, principal_id=principal.id,
                   principal_name=principal.name, team=principal.team,
                   headers=request.headers,
                   input_tokens=estimate_tokens(body, len(request.body)),
                   thinking=thinking, tools=tools,
                   background=_glob(model, background_models))


def matches(match: Match, facts: Facts) -> bool:
    if match.models and not _glob(facts.model, match.models):
        return False
    if match.paths and not _glob(facts.path, match.paths):
        return False
    if match.principals and not (_glob(facts.principal_id, match.principals) or
                                 _glob(facts.principal_name, match.principals)):
        return False
    if match.teams and not _glob(facts.team, match.teams):
        return False
    for name, pattern in match.headers:
        if not _glob(facts.headers.get(name), (pattern,)):
            return False
    if match.min_input_tokens is not None and facts.input_tokens < match.min_input_tokens:
        return False
    if match.max_input_tokens is not None and facts.input_tokens > match.max_input_tokens:
        return False
    if match.thinking is not None and facts.thinking != match.thinking:
        return False
    if match.tools is not None and facts.tools != match.tools:
        return False
    return match.background is None or facts.background == match.background


def select(rules: tuple[RuleSpec, ...], facts: Facts) -> RuleSpec | None:
    """The first rule that matches (the default rule, last, matches everything)."""
    for rule in rules:
        if matches(rule.match, facts):
            return rule
    return None
