"""What a rule can match on, read once per request, and the matching itself."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from operator import attrgetter
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


Check = Callable[[Facts], bool]


class Matcher:
    """A rule's match table, compiled to the checks it names (a rule is tried on every
    request: one that names only a model glob makes one test, the default rule none)."""

    __slots__ = ("checks", "match")

    def __init__(self, match: Match) -> None:
        self.match = match
        checks: list[Check] = []
        for patterns, field in ((match.models, "model"), (match.paths, "path"),
                                (match.teams, "team"), (match.agents, "agent_id"),
                                (match.parent_agents, "parent_agent_id")):
            pattern = _compile(patterns)
            if pattern is not None:
                checks.append(_field_check(pattern, attrgetter(field)))
        principals = _compile(match.principals)
        if principals is not None:
            checks.append(_principal_check(principals))
        groups = _compile(match.groups)
        if groups is not None:
            checks.append(_groups_check(groups))
        for name, glob in match.headers:
            pattern = _compile((glob,))
            assert pattern is not None
            checks.append(_header_check(name, pattern))
        if match.min_input_tokens is not None:
            checks.append(_tokens_check(match.min_input_tokens, None))
        if match.max_input_tokens is not None:
            checks.append(_tokens_check(None, match.max_input_tokens))
        for flag, field in ((match.thinking, "thinking"), (match.tools, "tools"),
                            (match.background, "background")):
            if flag is not None:
                checks.append(_flag_check(attrgetter(field), flag))
        self.checks = tuple(checks)

    def __call__(self, facts: Facts) -> bool:
        for check in self.checks:  # noqa: SIM110 (all() over a generator costs a frame more)
            if not check(facts):
                return False
        return True


def _field_check(pattern: re.Pattern[str], get: Callable[[Facts], str | None]) -> Check:
    return lambda facts: _hit(pattern, get(facts))


def _principal_check(pattern: re.Pattern[str]) -> Check:
    return lambda facts: _hit(pattern, facts.principal_id) or \
        _hit(pattern, facts.principal_name)


def _groups_check(pattern: re.Pattern[str]) -> Check:
    return lambda facts: any(_hit(pattern, group) for group in facts.groups)


def _header_check(name: str, pattern: re.Pattern[str]) -> Check:
    return lambda facts: _hit(pattern, facts.headers.get(name))


def _tokens_check(least: int | None, most: int | None) -> Check:
    if least is not None:
        return lambda facts: facts.input_tokens >= least
    assert most is not None
    return lambda facts: facts.input_tokens <= most


def _flag_check(get: Callable[[Facts], bool], want: bool) -> Check:
    return lambda facts: get(facts) == want


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
