"""Which requests the cache answers without being asked: the ``[cache] rules``.

The cache is opt-in. A request is looked up (and its answer stored) only when it asks with
``x-midway-cache: use`` (or ``refresh``), or when one of these rules matches it. A rule is a
table of conditions that must all hold: ``model``, ``team`` and ``path`` are globs
(``fnmatch``, case-sensitive) over the request's model, its principal's team and its path;
``temperature`` is compared with the request's ``temperature`` (absent: Anthropic's default,
1.0). ``[{ temperature = 0 }]`` caches only deterministic requests; ``[{ model = "*" }]``
caches every request.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

import attrs

from midway import Exchange

_DEFAULT_TEMPERATURE = 1.0  # what Anthropic samples with when a request names none
_KEYS = ("model", "team", "path", "temperature")


@attrs.frozen
class CacheRule:
    """One rule: every condition it sets must hold (``None``: any)."""

    model: str | None = None
    team: str | None = None
    path: str | None = None
    temperature: float | None = None

    def matches(self, exchange: Exchange) -> bool:
        if self.path is not None and not fnmatch.fnmatchcase(exchange.request.path, self.path):
            return False
        if self.team is not None:
            team = exchange.principal.team
            if team is None or not fnmatch.fnmatchcase(team, self.team):
                return False
        if self.model is not None and not fnmatch.fnmatchcase(exchange.model or "", self.model):
            return False
        if self.temperature is not None:
            body = exchange.request.json
            value = body.get("temperature", _DEFAULT_TEMPERATURE) \
                if isinstance(body, dict) else None
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    float(value) != self.temperature:
                return False
        return True


def any_matches(rules: Iterable[CacheRule], exchange: Exchange) -> bool:
    return any(rule.matches(exchange) for rule in rules)


def parse_rules(value: Any) -> tuple[CacheRule, ...]:
    """``[{ model = "claude-haiku-*" }, { temperature = 0 }]`` as rules; a ``ValueError``
    saying what is wrong otherwise."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of tables such as [{ temperature = 0 }]")
    rules = []
    for number, item in enumerate(value, 1):
        if isinstance(item, CacheRule):
            rules.append(item)
            continue
        if not isinstance(item, dict) or not item:
            raise ValueError(f"rule {number}: expected a table of {', '.join(_KEYS)}, "
                             "e.g. { model = \"claude-haiku-*\" }")
        unknown = sorted(set(item) - set(_KEYS))
        if unknown:
            raise ValueError(f"rule {number}: unknown condition {unknown[0]!r}; the "
                             f"conditions are {', '.join(_KEYS)}")
        for key in ("model", "team", "path"):
            if key in item and not isinstance(item[key], str):
                raise ValueError(f"rule {number}: {key} must be a glob string")
        temperature = item.get("temperature")
        if temperature is not None and (isinstance(temperature, bool) or
                                        not isinstance(temperature, int | float)):
            raise ValueError(f"rule {number}: temperature must be a number, e.g. 0")
        rules.append(CacheRule(model=item.get("model"), team=item.get("team"),
                               path=item.get("path"),
                               temperature=None if temperature is None else float(temperature)))
    return tuple(rules)
