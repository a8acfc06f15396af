"""What a rule can match on, read once per request, and the matching itself."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from operator import attrgetter
from typing import Any

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


def _no_binary(raw: bytes) -> bool:
    """Whether ``estimate_tokens`` would find no base64 in this body, without parsing it: no
    key anywhere can be ``data``. Without a backslash nothing is escaped, so such a key would
    be spelled ``"data"`` (a body with escapes, most of Claude Code's, is parsed: looking for
    a key's letters as \\u escapes too costs about what the parse does). A JSON object is at
    least 2 bytes; below 4 the estimate of a non-object differs from an object's."""
    return len(raw) >= 4 and b"\\" not in raw and b'"data"' not in raw


class Facts:
    """The request as rules see it. What the body says (``model``, ``thinking``, ``tools``,
    ``background``, ``input_tokens``) is read on first use: a rule table and pools that never
    ask (no model rule, one key per upstream) never parse the body. Readers that do ask read
    it while the request is being routed, so it is the body as routed."""

    __slots__ = ("_background_models", "_keep", "_model", "_principal", "_request",
                 "_thinking", "_tokens", "_tools", "agent_id", "body_read", "parent_agent_id")

    def __init__(self, exchange: Exchange, background_models: re.Pattern[str],
                 keep: bool = False, tokens: bool = False) -> None:
        """``tokens``: estimate the input tokens now (key picking reads them). ``keep``: parse
        the body through the exchange (kept for the attempt to read); else a body nobody
        parsed yet is parsed for these facts only and freed at once. A kept tree lives as long
        as the exchange (a stream's, minutes), and with many requests in flight each parse then
        fills memory the CPU cache no longer holds: 2-3 times the parse.

        The request's and principal's fields are read when a rule asks (most tables name one
        or two of them): the rules run as the facts are made, on the request as routed. The
        facts keep the request and principal, not the exchange: the exchange's state keeps the
        facts, and a cycle would leave every routed exchange to the cyclic collector."""
        self._request = exchange.request
        self._principal = exchange.principal
        self.agent_id = exchange.agent_id
        self.parent_agent_id = exchange.parent_agent_id
        self._keep = keep
        self._background_models = background_models
        self._tokens: int | None = None
        self.body_read = False  # whether the body's facts have been read (parsed)
        self._model: str | None = None
        self._thinking = False
        self._tools = False
        if tokens:
            self._estimate()

    @property
    def path(self) -> str:
        return self._request.path

    @property
    def principal_id(self) -> str:
        return self._principal.id

    @property
    def principal_name(self) -> str:
        return self._principal.name

    @property
    def team(self) -> str | None:
        return self._principal.team

    @property
    def headers(self) -> Any:
        return self._request.headers  # CIMultiDict, case-insensitive

    @property
    def groups(self) -> tuple[str, ...]:
        """The principal's groups, from its credential (never from a request header)."""
        return self._principal.groups

    def _read(self) -> Any:
        """Parse the body (or read the exchange's parse) for its facts; the tree, to estimate
        tokens from if they are wanted (most tables and pools never want them)."""
        request = self._request
        body = request.json if self._keep or request.parsed else _loads(request.body)
        model = body.get("model") if isinstance(body, dict) else None
        self._model = model if isinstance(model, str) else None
        if isinstance(body, dict):
            config = body.get("thinking")
            self._thinking = isinstance(config, dict) and \
                config.get("type") not in (None, "disabled")
            self._tools = bool(body.get("tools"))
        self.body_read = True
        return body

    @property
    def model(self) -> str | None:
        if not self.body_read:
            self._read()
        return self._model

    @property
    def thinking(self) -> bool:
        if not self.body_read:
            self._read()
        return self._thinking

    @property
    def tools(self) -> bool:
        if not self.body_read:
            self._read()
        return self._tools

    @property
    def background(self) -> bool:
        model = self.model
        return model is not None and self._background_models.match(model) is not None

    @property
    def input_tokens(self) -> int:
        return self._tokens if self._tokens is not None else self._estimate()

    def _estimate(self) -> int:
        """:func:`estimate_tokens` of the body; without a parse when it holds no base64."""
        raw = self._request.body
        # what estimate_tokens gives any body of 4 bytes or more without base64
        tokens = max(1, len(raw) // 4) if _no_binary(raw) else \
            estimate_tokens(self._read(), len(raw))
        self._tokens = tokens
        return tokens


def _loads(body: bytes) -> Any:
    """The body as :attr:`midway.exchange.Request.json` reads it, without keeping it."""
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


# A glob list with this one matches every string: its check is that the value is one.
_EVERYTHING = "*"


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
            if _EVERYTHING in patterns:  # e.g. model = "*": no regex to run
                checks.append(_present_check(attrgetter(field)))
                continue
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


def _present_check(get: Callable[[Facts], str | None]) -> Check:
    return lambda facts: get(facts) is not None


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
        # each rule's checks, run here (calling a Matcher object costs a slot lookup more)
        self._checks = [(rule, matcher.checks) for rule, matcher in self.rules]

    def select(self, facts: Facts) -> RuleSpec | None:
        for rule, checks in self._checks:
            for check in checks:
                if not check(facts):
                    break
            else:
                return rule
        return None


def background_pattern(globs: tuple[str, ...]) -> re.Pattern[str]:
    """Claude Code's background (small/fast model) calls, by model name."""
    return _compile(globs) or re.compile(r"(?!)")
