"""The ``[router]`` config table, parsed and checked once at start-up.

Credentials stay references (literal, ``env:NAME``, ``file:PATH``) here; they are resolved by
:mod:`midway_router.pool` and never appear in an error message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

KINDS = ("anthropic", "openai", "bedrock")
BALANCES = ("weighted", "least-busy", "ordered")
AFFINITIES = ("session", "principal", "none")
# Claude Code's small/fast model (titles, summaries, quota probes) is a Haiku.
BACKGROUND_MODELS = ("claude-3-5-haiku*", "claude-haiku-*", "*-haiku-*")
DEFAULT_URLS = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com"}


class RouterConfigError(ValueError):
    """The ``[router]`` table cannot be used; the message says where."""


@attrs.frozen
class AwsCredential:
    access_key_id: str  # reference
    secret_access_key: str  # reference
    session_token: str | None = None  # reference


@attrs.frozen
class UpstreamSpec:
    name: str
    kind: str
    url: str
    keys: tuple[str, ...] = ()  # references; empty: the client's own credentials pass through
    aws: tuple[AwsCredential, ...] = ()
    region: str | None = None
    auth: str = "x-api-key"  # x-api-key | bearer (how an anthropic key is presented)
    headers: Mapping[str, str] = attrs.field(factory=dict)
    models: tuple[tuple[str, str], ...] = ()  # (glob, vendor model) rewrites, first match wins
    weight: float = 1.0
    max_tokens_field: str = "max_tokens"  # openai: "max_completion_tokens" for o-series models


@attrs.frozen
class TargetSpec:
    upstream: str
    model: str | None = None
    weight: float | None = None  # None: the upstream's weight


@attrs.frozen
class Match:
    models: tuple[str, ...] = ()
    principals: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    paths: tuple[str, ...] = ()
    min_input_tokens: int | None = None
    max_input_tokens: int | None = None
    thinking: bool | None = None
    tools: bool | None = None
    background: bool | None = None


@attrs.frozen
class RuleSpec:
    name: str
    match: Match
    targets: tuple[TargetSpec, ...]
    fallback: tuple[TargetSpec, ...] = ()
    balance: str = "weighted"


@attrs.frozen
class RouterSettings:
    upstreams: tuple[UpstreamSpec, ...]
    rules: tuple[RuleSpec, ...]  # the default rule (no match) is last
    state: str | None = None  # redis://... shares key health across instances
    state_prefix: str = "midway:router"
    affinity: str = "session"
    affinity_header: str = "x-claude-code-session-id"
    affinity_ttl: float = 3600.0
    affinity_max: int = 100_000
    background_models: tuple[str, ...] = BACKGROUND_MODELS
    max_retries: int = 4
    retry_ratio: float = 0.2  # retries may add this fraction of recent requests...
    min_retries_per_second: float = 5.0  # ...plus this floor
    backoff_base: float = 0.05
    backoff_max: float = 2.0
    rest_base: float = 1.0
    rest_max: float = 300.0
    disable_for: float = 900.0
    down_base: float = 5.0
    down_max: float = 60.0
    down_after_5xx: int = 3
    status_interval: float = 1.0

    def upstream(self, name: str) -> UpstreamSpec:
        for spec in self.upstreams:
            if spec.name == name:
                return spec
        raise KeyError(name)


def _strs(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RouterConfigError(f"{where} must be a string or a list of strings")


def _bool(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise RouterConfigError(f"{where} must be true or false")


def _int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise RouterConfigError(f"{where} must be a non-negative integer")


def _number(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise RouterConfigError(f"{where}.{key} must be a non-negative number")


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    raise RouterConfigError(f"{where} must be a table")


def _upstream(raw: Any, index: int) -> UpstreamSpec:
    where = f"[[router.upstreams]] #{index + 1}"
    table = _table(raw, where)
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise RouterConfigError(f"{where} needs a name")
    where = f"router upstream {name!r}"
    kind = table.get("kind", "anthropic")
    if kind not in KINDS:
        raise RouterConfigError(f"{where}: kind must be one of {', '.join(KINDS)}")
    region = table.get("region")
    if kind == "bedrock":
        if not isinstance(region, str):
            raise RouterConfigError(f"{where}: a bedrock upstream needs a region")
        url = table.get("url") or f"https://bedrock-runtime.{region}.amazonaws.com"
    else:
        url = table.get("url") or DEFAULT_URLS[kind]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise RouterConfigError(f"{where}: url must be an http(s) URL")
    keys = _strs(table.get("keys", table.get("key")), f"{where}: keys")
    aws = []
    for i, cred in enumerate(table.get("credentials") or ()):
        cred = _table(cred, f"{where}: credentials #{i + 1}")
        if "access_key_id" not in cred or "secret_access_key" not in cred:
            raise RouterConfigError(f"{where}: credentials #{i + 1} needs access_key_id and "
                                    "secret_access_key")
        token = cred.get("session_token")
        aws.append(AwsCredential(str(cred["access_key_id"]), str(cred["secret_access_key"]),
                                 str(token) if token is not None else None))
    if kind == "bedrock" and not aws:
        raise RouterConfigError(f"{where}: a bedrock upstream needs [[credentials]]")
    auth = table.get("auth", "x-api-key")
    if auth not in ("x-api-key", "bearer"):
        raise RouterConfigError(f"{where}: auth must be 'x-api-key' or 'bearer'")
    headers = {str(k): str(v) for k, v in _table(table.get("headers", {}), where).items()}
    models_raw = table.get("models", {})
    if isinstance(models_raw, str):
        models_raw = {"*": models_raw}
    models = tuple((str(k), str(v)) for k, v in _table(models_raw, f"{where}: models").items())
    weight = _number(table, "weight", 1.0, where)
    max_tokens_field = table.get("max_tokens_field", "max_tokens")
    if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
        raise RouterConfigError(f"{where}: max_tokens_field must be 'max_tokens' or "
                                "'max_completion_tokens'")
    return UpstreamSpec(name=name, kind=kind, url=url, keys=keys, aws=tuple(aws),
                        region=region, auth=auth, headers=headers, models=models,
                        weight=weight, max_tokens_field=max_tokens_field)


def _target(raw: Any, where: str, model: str | None = None) -> TargetSpec:
    if isinstance(raw, str):
        return TargetSpec(upstream=raw, model=model)
    table = _table(raw, where)
    upstream = table.get("upstream")
    if not isinstance(upstream, str):
        raise RouterConfigError(f"{where}: a target needs an upstream name")
    weight = table.get("weight")
    if weight is not None:
        weight = _number(table, "weight", 1.0, where)
    rewrite = table.get("model", model)
    return TargetSpec(upstream=upstream, model=str(rewrite) if rewrite else None, weight=weight)


def _match(raw: Any, where: str) -> Match:
    table = _table(raw or {}, where)
    known = {"model", "principal", "team", "headers", "path", "min_input_tokens",
             "max_input_tokens", "thinking", "tools", "background"}
    unknown = set(table) - known
    if unknown:
        raise RouterConfigError(f"{where}: unknown match key(s) {', '.join(sorted(unknown))}")
    headers = tuple((str(k).lower(), str(v))
                    for k, v in _table(table.get("headers", {}), f"{where}.headers").items())
    return Match(models=_strs(table.get("model"), f"{where}.model"),
                 principals=_strs(table.get("principal"), f"{where}.principal"),
                 teams=_strs(table.get("team"), f"{where}.team"),
                 headers=headers,
                 paths=_strs(table.get("path"), f"{where}.path"),
                 min_input_tokens=_int(table.get("min_input_tokens"), f"{where}.min_input_tokens"),
                 max_input_tokens=_int(table.get("max_input_tokens"), f"{where}.max_input_tokens"),
                 thinking=_bool(table.get("thinking"), f"{where}.thinking"),
                 tools=_bool(table.get("tools"), f"{where}.tools"),
                 background=_bool(table.get("background"), f"{where}.background"))


def _rule(table: Mapping[str, Any], name: str, where: str, with_match: bool = True) -> RuleSpec:
    model = table.get("model")
    if model is not None and not isinstance(model, str):
        raise RouterConfigError(f"{where}: model (the rewrite) must be a string")
    targets: list[TargetSpec] = []
    if "target" in table:
        targets.append(_target(table["target"], f"{where}.target", model))
    for i, raw in enumerate(table.get("targets") or ()):
        targets.append(_target(raw, f"{where}.targets #{i + 1}", model))
    fallback = tuple(_target(raw, f"{where}.fallback #{i + 1}")
                     for i, raw in enumerate(_as_list(table.get("fallback"))))
    balance = table.get("balance", "weighted")
    if balance not in BALANCES:
        raise RouterConfigError(f"{where}: balance must be one of {', '.join(BALANCES)}")
    match = _match(table.get("match"), f"{where}.match") if with_match else Match()
    return RuleSpec(name=name, match=match, targets=tuple(targets), fallback=fallback,
                    balance=balance)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def parse(config: Mapping[str, Any]) -> RouterSettings:
    """Check the ``[router]`` table and build :class:`RouterSettings`."""
    upstreams = tuple(_upstream(raw, i) for i, raw in enumerate(config.get("upstreams") or ()))
    names = [u.name for u in upstreams]
    if len(set(names)) != len(names):
        raise RouterConfigError("router upstream names must be unique")
    rules = []
    for i, raw in enumerate(config.get("rules") or ()):
        table = _table(raw, f"[[router.rules]] #{i + 1}")
        name = str(table.get("name") or f"rule{i + 1}")
        rule = _rule(table, name, f"router rule {name!r}")
        if not rule.targets:
            raise RouterConfigError(f"router rule {name!r} needs a target or targets")
        rules.append(rule)
    if upstreams:
        default = _rule(config, "default", "[router]", with_match=False)
        if not default.targets:
            default = attrs.evolve(default, targets=(TargetSpec(upstream=upstreams[0].name),))
        rules.append(default)
    for rule in rules:
        for target in (*rule.targets, *rule.fallback):
            if target.upstream not in names:
                raise RouterConfigError(f"router rule {rule.name!r} names unknown upstream "
                                        f"{target.upstream!r}")
    affinity = config.get("affinity", "session")
    if affinity not in AFFINITIES:
        raise RouterConfigError(f"[router] affinity must be one of {', '.join(AFFINITIES)}")
    state = config.get("state")
    if state is not None and (not isinstance(state, str) or
                              not state.startswith(("redis://", "rediss://", "unix://"))):
        raise RouterConfigError("[router] state must be a redis:// URL (or absent: in memory)")
    max_retries = _int(config.get("max_retries", 4), "[router] max_retries")
    where = "[router]"
    return RouterSettings(
        upstreams=upstreams, rules=tuple(rules), state=state,
        state_prefix=str(config.get("state_prefix", "midway:router")),
        affinity=affinity,
        affinity_header=str(config.get("affinity_header", "x-claude-code-session-id")).lower(),
        affinity_ttl=_number(config, "affinity_ttl", 3600.0, where),
        affinity_max=int(_number(config, "affinity_max", 100_000, where)),
        background_models=_strs(config.get("background_models"), "[router] background_models")
        or BACKGROUND_MODELS,
        max_retries=max_retries if max_retries is not None else 4,
        retry_ratio=_number(config, "retry_ratio", 0.2, where),
        min_retries_per_second=_number(config, "min_retries_per_second", 5.0, where),
        backoff_base=_number(config, "backoff_base", 0.05, where),
        backoff_max=_number(config, "backoff_max", 2.0, where),
        rest_base=_number(config, "rest_base", 1.0, where),
        rest_max=_number(config, "rest_max", 300.0, where),
        disable_for=_number(config, "disable_for", 900.0, where),
        down_base=_number(config, "down_base", 5.0, where),
        down_max=_number(config, "down_max", 60.0, where),
        down_after_5xx=int(_number(config, "down_after_5xx", 3, where)),
        status_interval=_number(config, "status_interval", 1.0, where),
    )
