"""What a rule can match on, read once per request, and the matching itself."""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import attrs
import orjson

from midway.exchange import Exchange
from midway_router.settings import Match, RuleSpec


def estimate_tokens(body: Any, size: int) -> int:
    """A cheap input-token estimate: about four bytes of JSON per token, without the base64
    of images and documents (which Anthropic counts far lower than their length)."""
    if not isinstance(body, dict):
        return size // 4
    binary = 0
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():  # a client's bad body
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
    agent_id: str | None = None
    parent_agent_id: str | None = None
    # The principal's groups, from its credential (never from a request header).
    groups: tuple[str, ...] = ()

    @classmethod
    def of(cls, exchange: Exchange, background_models: re.Pattern[str], keep: bool = False
           ) -> Facts:
        """``keep``: parse the body through the exchange (kept for the attempt to read); else
        a body nobody parsed yet is parsed for these facts only and freed at once. A kept tree
        lives as long as the exchange (a stream's, minutes), and with many requests in flight
        each parse then fills memory the CPU cache no longer holds: 2-3 times the parse."""
        request = exchange.request
        body = request.json if keep or request.parsed else _loads(request.body)
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str):
            model = None
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
                   background=model is not None and background_models.match(model) is not None,
                   agent_id=exchange.agent_id, parent_agent_id=exchange.parent_agent_id,
                   groups=tuple(principal.groups))


def _loads(body: bytes) -> Any:
    """The body as :attr:`midway.exchange.Request.json` reads it, without keeping it."""
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex for a list of globs (matching is on the hot path of every request)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _hit(pattern: re.Pattern[str], value: str | None) -> bool:
    return value is not None and pattern.match(value) is not None


class Matcher:
    """A rule's match table, compiled."""

    __slots__ = ("agents", "background", "groups", "headers", "match", "max_tokens", "min_tokens",
                 "models", "parent_agents", "paths", "principals", "teams", "thinking", "tools")

    def __init__(self, match: Match) -> None:
        self.match = match
        self.models = _compile(match.models)
        self.paths = _compile(match.paths)
        self.principals = _compile(match.principals)
        self.teams = _compile(match.teams)
        self.groups = _compile(match.groups)
        self.headers = [(name, _compile((glob,))) for name, glob in match.headers]
        self.min_tokens = match.min_input_tokens
        self.max_tokens = match.max_input_tokens
        self.thinking = match.thinking
        self.tools = match.tools
        self.background = match.background
        self.agents = _compile(match.agents)
        self.parent_agents = _compile(match.parent_agents)

    def __call__(self, facts: Facts) -> bool:
        if self.models is not None and not _hit(self.models, facts.model):
            return False
        if self.paths is not None and not _hit(self.paths, facts.path):
            return False
        if self.principals is not None and not (_hit(self.principals, facts.principal_id) or
                                                _hit(self.principals, facts.principal_name)):
            return False
        if self.teams is not None and not _hit(self.teams, facts.team):
            return False
        if self.groups is not None and not any(_hit(self.groups, g) for g in facts.groups):
            return False
        if self.agents is not None and not _hit(self.agents, facts.agent_id):
            return False
        if self.parent_agents is not None and not _hit(self.parent_agents,
                                                       facts.parent_agent_id):
            return False
        for name, pattern in self.headers:
            assert pattern is not None
            if not _hit(pattern, facts.headers.get(name)):
                return False
        if self.min_tokens is not None and facts.input_tokens < self.min_tokens:
            return False
        if self.max_tokens is not None and facts.input_tokens > self.max_tokens:
            return False
        if self.thinking is not None and facts.thinking != self.thinking:
            return False
        if self.tools is not None and facts.tools != self.tools:
            return False
        return self.background is None or facts.background == self.background


class RuleTable:
    """The ordered rules, compiled once; ``select`` gives the first that matches."""

    def __init__(self, rules: tuple[RuleSpec, ...]) -> None:
        self.rules = [(rule, Matcher(rule.match)) for rule in rules]

    def select(self, facts: Facts) -> RuleSpec | None:
        for rule, matcher in self.rules:
            if matcher(facts):
                return rule
        return None


def background_pattern(globs: tuple[str, ...]) -> re.Pattern[str]:
    """Claude Code's background (small/fast model) calls, by model name."""
    return _compile(globs) or re.compile(r"(?!)")
