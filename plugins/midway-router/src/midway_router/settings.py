"""The ``[router]`` config table, parsed and checked once at start-up.

Credentials stay references (literal, ``env:NAME``, ``file:PATH``) here; they are resolved by
:mod:`midway_router.pool` and never appear in an error message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from midway.config import ConfigError
from midway.options import load_table, option

KINDS = ("anthropic", "openai", "bedrock", "vertex", "foundry", "aws")
BALANCES = ("weighted", "least-busy", "ordered")
# Claude Code's small/fast model (titles, summaries, quota probes) is a Haiku.
BACKGROUND_MODELS = ("claude-3-5-haiku*", "claude-haiku-*", "*-haiku-*")
PING_INTERVAL = 10.0
DEFAULT_URLS = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com"}
# Anthropic-format platforms reached only with their own keys (never the client's).
NO_DEFAULT_URL = ("foundry", "aws")


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
    # openai, bedrock: seconds of upstream silence after which a translated stream gets a
    # ping (those vendors send none; Claude Code gives up on a stream silent for 300 s); 0: off
    ping_interval: float = PING_INTERVAL
    service_account: str | None = None  # vertex: reference to the service account's JSON
    project: str | None = None  # vertex: the Google Cloud project (default: the account's)
    workspace: str | None = None  # aws: the anthropic-workspace-id sent with every request


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
    # the principal's groups (an API key's, or a signed-in person's from the IdP): a glob
    # matching any one of them
    groups: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    paths: tuple[str, ...] = ()
    min_input_tokens: int | None = None
    max_input_tokens: int | None = None
    thinking: bool | None = None
    tools: bool | None = None
    background: bool | None = None
    # Claude Code's subagent (x-claude-code-agent-id) and its parent: globs; "*" matches every
    # subagent's request, never the main agent's (which sends no id)
    agents: tuple[str, ...] = ()
    parent_agents: tuple[str, ...] = ()


@attrs.frozen
class RuleSpec:
    name: str
    match: Match
    targets: tuple[TargetSpec, ...]
    fallback: tuple[TargetSpec, ...] = ()
    balance: str = "weighted"
    admin_api: bool = False  # may forward Anthropic's admin API (/v1/organizations/...)
    display_name: str | None = None  # what /v1/models shows for the models routed by name
    description: str | None = None


def _strs(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where} must be a string or a list of strings")


def _bool(value: Any, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ConfigError(f"{where} must be true or false")


def _int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"{where} must be a non-negative integer")


def _number(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise ConfigError(f"{where}.{key} must be a non-negative number")


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    raise ConfigError(f"{where} must be a table")


def _upstream(raw: Any, index: int) -> UpstreamSpec:
    where = f"#{index + 1}"
    table = _table(raw, where)
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} needs a name")
    where = f"upstream {name!r}"
    kind = table.get("kind", "anthropic")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}")
    region = table.get("region")
    if kind == "bedrock":
        if not isinstance(region, str):
            raise ConfigError(f"{where}: a bedrock upstream needs a region")
        url = table.get("url") or f"https://bedrock-runtime.{region}.amazonaws.com"
    elif kind == "vertex":
        if not isinstance(region, str) or not region:
            raise ConfigError(f"{where}: a vertex upstream needs a region (e.g. "
                              "region = \"us-east5\", or \"global\")")
        if not isinstance(table.get("service_account"), str):
            raise ConfigError(f"{where}: a vertex upstream needs service_account = "
                              "\"file:/path/key.json\" (or env:NAME holding the JSON)")
        url = table.get("url") or (
            "https://aiplatform.googleapis.com" if region == "global" else
            f"https://{region}-aiplatform.googleapis.com")
    elif kind == "aws":
        url = table.get("url") or (f"https://aws-external-anthropic.{region}.api.aws"
                                   if isinstance(region, str) and region else None)
        if not url:
            raise ConfigError(f"{where}: Claude Platform on AWS needs a region (or its url)")
    elif kind == "foundry":
        url = table.get("url")
        if not url:
            raise ConfigError(f"{where}: a foundry upstream needs its url "
                              "(https://<resource>.services.ai.azure.com/anthropic)")
    else:
        url = table.get("url") or DEFAULT_URLS[kind]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: url must be an http(s) URL")
    keys = _strs(table.get("keys", table.get("key")), f"{where}: keys")
    aws = []
    for i, cred in enumerate(table.get("credentials") or ()):
        cred = _table(cred, f"{where}: credentials #{i + 1}")
        if "access_key_id" not in cred or "secret_access_key" not in cred:
            raise ConfigError(f"{where}: credentials #{i + 1} needs access_key_id and "
                                    "secret_access_key")
        token = cred.get("session_token")
        aws.append(AwsCredential(str(cred["access_key_id"]), str(cred["secret_access_key"]),
                                 str(token) if token is not None else None))
    if kind == "bedrock" and not aws:
        raise ConfigError(f"{where}: a bedrock upstream needs [[credentials]]")
    auth = table.get("auth", "x-api-key")
    if auth not in ("x-api-key", "bearer"):
        raise ConfigError(f"{where}: auth must be 'x-api-key' or 'bearer'")
    headers = {str(k): str(v) for k, v in _table(table.get("headers", {}), where).items()}
    models_raw = table.get("models", {})
    if isinstance(models_raw, str):
        models_raw = {"*": models_raw}
    models = tuple((str(k), str(v)) for k, v in _table(models_raw, f"{where}: models").items())
    weight = _number(table, "weight", 1.0, where)
    ping_interval = _number(table, "ping_interval", PING_INTERVAL, where)
    max_tokens_field = table.get("max_tokens_field", "max_tokens")
    if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
        raise ConfigError(f"{where}: max_tokens_field must be 'max_tokens' or "
                                "'max_completion_tokens'")
    project = table.get("project")
    if project is not None and not isinstance(project, str):
        raise ConfigError(f"{where}: project must be a string")
    workspace = table.get("workspace")
    if kind == "aws" and not isinstance(workspace, str):
        raise ConfigError(f"{where}: Claude Platform on AWS needs workspace = \"wrkspc_…\" "
                          "(sent as anthropic-workspace-id on every request)")
    if kind in NO_DEFAULT_URL and not keys:
        raise ConfigError(f"{where}: a {kind} upstream needs keys (its API keys, as "
                          "references: env:NAME or file:PATH)")
    return UpstreamSpec(name=name, kind=kind, url=url, keys=keys, aws=tuple(aws),
                        region=region, auth=auth, headers=headers, models=models,
                        weight=weight, max_tokens_field=max_tokens_field,
                        ping_interval=ping_interval,
                        service_account=table.get("service_account"), project=project,
                        workspace=workspace if isinstance(workspace, str) else None)


def _target(raw: Any, where: str, model: str | None = None) -> TargetSpec:
    if isinstance(raw, str):
        return TargetSpec(upstream=raw, model=model)
    table = _table(raw, where)
    upstream = table.get("upstream")
    if not isinstance(upstream, str):
        raise ConfigError(f"{where}: a target needs an upstream name")
    weight = table.get("weight")
    if weight is not None:
        weight = _number(table, "weight", 1.0, where)
    rewrite = table.get("model", model)
    return TargetSpec(upstream=upstream, model=str(rewrite) if rewrite else None, weight=weight)


def _match(raw: Any, where: str) -> Match:
    table = _table(raw or {}, where)
    known = {"model", "principal", "team", "group", "headers", "path", "min_input_tokens",
             "max_input_tokens", "thinking", "tools", "background", "agent", "parent_agent"}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"{where}: unknown match key(s) {', '.join(sorted(unknown))}")
    headers = tuple((str(k).lower(), str(v))
                    for k, v in _table(table.get("headers", {}), f"{where}.headers").items())
    return Match(models=_strs(table.get("model"), f"{where}.model"),
                 principals=_strs(table.get("principal"), f"{where}.principal"),
                 teams=_strs(table.get("team"), f"{where}.team"),
                 groups=_strs(table.get("group"), f"{where}.group"),
                 headers=headers,
                 paths=_strs(table.get("path"), f"{where}.path"),
                 min_input_tokens=_int(table.get("min_input_tokens"), f"{where}.min_input_tokens"),
                 max_input_tokens=_int(table.get("max_input_tokens"), f"{where}.max_input_tokens"),
                 thinking=_bool(table.get("thinking"), f"{where}.thinking"),
                 tools=_bool(table.get("tools"), f"{where}.tools"),
                 background=_bool(table.get("background"), f"{where}.background"),
                 agents=_strs(table.get("agent"), f"{where}.agent"),
                 parent_agents=_strs(table.get("parent_agent"), f"{where}.parent_agent"))


def _rule(table: Mapping[str, Any], name: str, where: str) -> RuleSpec:
    model = table.get("model")
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"{where}: model (the rewrite) must be a string")
    targets: list[TargetSpec] = []
    if "target" in table:
        targets.append(_target(table["target"], f"{where}.target", model))
    for i, raw in enumerate(table.get("targets") or ()):
        targets.append(_target(raw, f"{where}.targets #{i + 1}", model))
    fallback = tuple(_target(raw, f"{where}.fallback #{i + 1}")
                     for i, raw in enumerate(_as_list(table.get("fallback"))))
    balance = table.get("balance", "weighted")
    if balance not in BALANCES:
        raise ConfigError(f"{where}: balance must be one of {', '.join(BALANCES)}")
    match = _match(table.get("match"), f"{where}.match")
    admin_api = _bool(table.get("admin_api"), f"{where}.admin_api") or False
    texts = {}
    for key in ("display_name", "description"):
        value = table.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string")
        texts[key] = value
    return RuleSpec(name=name, match=match, targets=tuple(targets), fallback=fallback,
                    balance=balance, admin_api=admin_api, **texts)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _upstreams(value: Any) -> tuple[UpstreamSpec, ...]:
    upstreams = tuple(_upstream(raw, i) for i, raw in enumerate(_as_list(value)))
    names = [u.name for u in upstreams]
    if len(set(names)) != len(names):
        raise ConfigError("upstream names must be unique")
    return upstreams


def _rules(value: Any) -> tuple[RuleSpec, ...]:
    rules = []
    for i, raw in enumerate(_as_list(value)):
        table = _table(raw, f"#{i + 1}")
        name = str(table.get("name") or f"rule{i + 1}")
        known = {"name", "match", "model", "target", "targets", "fallback", "balance",
                 "admin_api", "display_name", "description"}
        unknown = set(table) - known
        if unknown:
            raise ConfigError(f"rule {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
        rule = _rule(table, name, f"rule {name!r}")
        if not rule.targets:
            raise ConfigError(f"rule {name!r} needs a target or targets")
        rules.append(rule)
    return tuple(rules)


def _default_target(value: Any) -> TargetSpec | None:
    return None if value is None else _target(value, "target")


def _targets(value: Any) -> tuple[TargetSpec, ...]:
    return tuple(_target(raw, f"#{i + 1}") for i, raw in enumerate(_as_list(value)))


def _state(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and
                         value.startswith(("redis://", "rediss://", "unix://"))):
        return value
    raise ConfigError("expected a redis:// URL (or nothing: state in memory)")


def _header(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"expected a header name, got {value!r}")
    return value.lower()


def _background(value: Any) -> tuple[str, ...]:
    return _strs(value, "globs") or BACKGROUND_MODELS


@attrs.frozen
class RouterSettings:
    """The ``[router]`` table (docs/router.md). The default rule's keys (``target``,
    ``targets``, ``model``, ``fallback``, ``balance``) sit at the top of the table."""

    upstreams: tuple[UpstreamSpec, ...] = option(
        (), converter=_upstreams, help="[[router.upstreams]]: where requests may go, with "
        "their pooled keys (none: the router is off)")
    rules: tuple[RuleSpec, ...] = option(
        (), converter=_rules, help="[[router.rules]]: tried in order, the first match picks "
        "the targets")
    target: TargetSpec | None = option(
        None, converter=_default_target,
        help="the default rule's target (default: the first upstream)")
    targets: tuple[TargetSpec, ...] = option(
        (), converter=_targets, help="the default rule's balanced targets")
    model: str | None = option(None, help="the default rule's model rewrite")
    fallback: tuple[TargetSpec, ...] = option(
        (), converter=_targets, help="the default rule's fallbacks, tried in order")
    balance: Literal["weighted", "least-busy", "ordered"] = option(
        "weighted", help="how the default rule spreads requests over its targets")
    state: str | None = option(None, converter=_state,
                               help="redis://…: share key health between instances")
    state_prefix: str = option("midway:router", help="Redis key prefix")
    affinity: Literal["session", "principal", "none"] = option(
        "session", help="keep a session (header) or principal on one key and upstream")
    affinity_header: str = option("x-claude-code-session-id", converter=_header,
                                  help="the session header")
    affinity_ttl: float = option(3600.0, ge=0, help="seconds a session is remembered")
    affinity_max: int = option(100_000, ge=0, help="sessions remembered at most")
    background_models: tuple[str, ...] = option(
        BACKGROUND_MODELS, converter=_background,
        help="globs of Claude Code's small/fast model (match = { background = true })")
    max_retries: int = option(4, ge=0, help="retries per request")
    retry_ratio: float = option(0.2, ge=0, help="retries may add this fraction of the "
                                "requests of the last 10 s...")
    min_retries_per_second: float = option(5.0, ge=0, help="...plus this floor")
    backoff_base: float = option(0.05, ge=0, help="first delay between attempts, seconds")
    backoff_max: float = option(2.0, ge=0, help="longest delay between attempts, seconds")
    rest_base: float = option(1.0, ge=0, help="a key's rest without retry-after, seconds")
    rest_max: float = option(300.0, ge=0, help="the longest rest, seconds")
    disable_for: float = option(900.0, ge=0, help="seconds a key is out after 401/403")
    down_base: float = option(5.0, ge=0, help="seconds an unreachable upstream is skipped")
    down_max: float = option(60.0, ge=0, help="the longest skip, seconds")
    down_after_5xx: int = option(3, ge=0, help="5xx answers in a row that mark it down")
    status_interval: float = option(1.0, ge=0, help="seconds between status snapshots")

    def __attrs_post_init__(self) -> None:
        names = {u.name for u in self.upstreams}
        for rule in self.routing_rules():
            for target in (*rule.targets, *rule.fallback):
                if target.upstream not in names:
                    raise ConfigError(f"[router] rule {rule.name!r} names unknown upstream "
                                      f"{target.upstream!r}")

    def routing_rules(self) -> tuple[RuleSpec, ...]:
        """The rules in order, then the default rule (when there are upstreams)."""
        if not self.upstreams:
            return self.rules
        targets = (*(() if self.target is None else (self.target,)), *self.targets)
        targets = tuple(t if t.model is not None else attrs.evolve(t, model=self.model)
                        for t in targets) or (TargetSpec(upstream=self.upstreams[0].name),)
        default = RuleSpec(name="default", match=Match(), targets=targets,
                           fallback=self.fallback, balance=self.balance)
        return (*self.rules, default)

    def named_models(self) -> list[dict[str, str]]:
        """The models the rules route by exact name (``match.model`` without a glob), as
        ``/v1/models`` lists them: the rule's ``display_name`` and ``description``, if any."""
        found: dict[str, dict[str, str]] = {}
        for rule in self.rules:
            for model in rule.match.models:
                if model in found or any(c in model for c in "*?["):
                    continue
                entry = {"id": model}
                if rule.display_name:
                    entry["display_name"] = rule.display_name
                if rule.description:
                    entry["description"] = rule.description
                found[model] = entry
        return list(found.values())

    def upstream(self, name: str) -> UpstreamSpec:
        for spec in self.upstreams:
            if spec.name == name:
                return spec
        raise KeyError(name)


def parse(table: Mapping[str, Any] | None) -> RouterSettings:
    """The ``[router]`` table as given (no environment overrides), e.g. in tests."""
    return load_table(RouterSettings, "router", table)
