"""Rule matching, balancing and config checks, on the Router itself (no server)."""

from __future__ import annotations

import re
from collections import Counter

import orjson
import pytest

from midway import MidwayError
from midway.config import ConfigError
from midway.exchange import Attempt, Principal
from midway.options import load_table
from midway.testing import make_exchange
from midway_router.router import Router
from midway_router.rules import Facts, _loads, background_pattern, estimate_tokens
from midway_router.settings import RouterSettings, parse

UPSTREAMS = [
    {"name": "main", "url": "http://127.0.0.1:1", "keys": ["sk-main-1"]},
    {"name": "long", "url": "http://127.0.0.1:2", "keys": ["sk-long-1"]},
    {"name": "cheap", "url": "http://127.0.0.1:3", "keys": ["sk-cheap-1"]},
    {"name": "think", "url": "http://127.0.0.1:4", "keys": ["sk-think-1"]},
    {"name": "search", "url": "http://127.0.0.1:5", "keys": ["sk-search-1"]},
    {"name": "bulk", "url": "http://127.0.0.1:6", "keys": ["sk-bulk-1"]},
]

RULES = [
    {"name": "team-search", "match": {"team": "search"}, "target": "search"},
    {"name": "batch-header", "match": {"headers": {"x-workload": "batch*"}}, "target": "bulk"},
    {"name": "long-context", "match": {"min_input_tokens": 2000}, "target": "long"},
    {"name": "background", "match": {"background": True}, "target": "cheap",
     "model": "claude-haiku-cheap"},
    {"name": "thinking-tools", "match": {"thinking": True, "tools": True}, "target": "think"},
    {"name": "alice-opus", "match": {"principal": "alice", "model": "claude-opus-*"},
     "target": "think"},
]


def router(rules=RULES, **extra) -> Router:
    return Router(parse({"upstreams": UPSTREAMS, "rules": rules, "target": "main", **extra}))


def body(**fields):
    base = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    return {**base, **fields}


def choose(r: Router, payload=None, headers=None, principal=None):
    exchange = make_exchange(payload or body(), headers=headers, principal=principal)
    upstream = r.choose(exchange)
    return upstream, exchange


def test_default_when_nothing_matches():
    upstream, exchange = choose(router())
    assert upstream.name == "main"
    assert upstream.url == "http://127.0.0.1:1"
    assert upstream.headers["x-api-key"] == "sk-main-1"
    assert upstream.passthrough_auth is False
    assert upstream.model is None
    assert exchange.annotations["route"] == "default"
    assert exchange.annotations["upstream_key"] == upstream.key_id
    assert "sk-main" not in upstream.key_id


def test_team_header_tokens_thinking_principal_rules():
    r = router()
    team = Principal(id="key:bob", name="bob", team="search", kind="key")
    assert choose(r, principal=team)[0].name == "search"
    assert choose(r, headers={"x-workload": "batch-nightly"})[0].name == "bulk"
    assert choose(r, headers={"x-workload": "interactive"})[0].name == "main"
    long = body(messages=[{"role": "user", "content": "word " * 3000}])
    upstream, exchange = choose(r, long)
    assert (upstream.name, exchange.annotations["route"]) == ("long", "long-context")
    both = body(thinking={"type": "adaptive"}, tools=[{"name": "Bash", "input_schema": {}}])
    assert choose(r, both)[0].name == "think"
    only_tools = body(tools=[{"name": "Bash", "input_schema": {}}])
    assert choose(r, only_tools)[0].name == "main"
    disabled = body(thinking={"type": "disabled"}, tools=[{"name": "Bash", "input_schema": {}}])
    assert choose(r, disabled)[0].name == "main"
    alice = Principal(id="key:alice", name="alice", kind="key")
    assert choose(r, body(model="claude-opus-4-8"), principal=alice)[0].name == "think"
    assert choose(r, body(model="claude-sonnet-4-6"), principal=alice)[0].name == "main"


def test_images_do_not_count_as_long_context():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "A" * 40_000}}
    payload = body(messages=[{"role": "user", "content": [image, {"type": "text",
                                                                   "text": "what is it"}]}])
    assert choose(router(), payload)[0].name == "main"


def test_background_haiku_is_rewritten_to_the_cheap_model():
    upstream, exchange = choose(router(), body(model="claude-haiku-4-5-20251001"))
    assert upstream.name == "cheap"
    assert upstream.model == "claude-haiku-cheap"
    assert exchange.annotations["route"] == "background"


def test_first_matching_rule_wins():
    # Long *and* background: the long-context rule comes first.
    long_haiku = body(model="claude-haiku-4-5", messages=[{"role": "user",
                                                           "content": "word " * 3000}])
    assert choose(router(), long_haiku)[0].name == "long"


def test_upstream_model_map_rewrites_for_a_vendor():
    upstreams = [{"name": "v", "url": "http://127.0.0.1:9", "keys": ["k"],
                  "models": {"claude-haiku-*": "small-model", "*": "big-model"}}]
    r = Router(parse({"upstreams": upstreams}))
    assert choose(r, body(model="claude-haiku-4-5"))[0].model == "small-model"
    assert choose(r, body(model="claude-opus-4-8"))[0].model == "big-model"


def test_weighted_balancing_follows_weights():
    rules = [{"name": "split", "match": {"model": "claude-*"}, "balance": "weighted",
              "targets": [{"upstream": "main", "weight": 3}, {"upstream": "cheap", "weight": 1}]}]
    r = router(rules)
    seen = Counter(choose(r)[0].name for _ in range(2000))
    share = seen["main"] / 2000
    assert 0.70 < share < 0.80, seen
    assert set(seen) == {"main", "cheap"}


def test_least_busy_balancing_prefers_the_idle_upstream():
    rules = [{"name": "lb", "match": {"model": "claude-*"}, "balance": "least-busy",
              "targets": ["main", "cheap"]}]
    r = router(rules)
    r.upstreams["main"].keys[0].in_flight = 5
    assert all(choose(r)[0].name == "cheap" for _ in range(20))
    r.upstreams["cheap"].keys[0].in_flight = 9
    assert all(choose(r)[0].name == "main" for _ in range(20))


def test_passthrough_upstream_without_keys():
    r = Router(parse({"upstreams": [{"name": "direct", "url": "http://127.0.0.1:9"}]}))
    upstream, _exchange = choose(r)
    assert upstream.passthrough_auth is True
    assert upstream.key_id is None
    assert "x-api-key" not in upstream.headers


def test_no_upstreams_leaves_the_choice_to_the_core():
    r = Router(parse({}))
    assert r.choose(make_exchange()) is None


def test_keys_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTER_TEST_KEY", "sk-from-env")
    secret = tmp_path / "key.txt"
    secret.write_text("sk-from-file\n")
    r = Router(parse({"upstreams": [{"name": "a", "url": "http://127.0.0.1:9",
                                     "keys": ["env:ROUTER_TEST_KEY", f"file:{secret}"]}]}))
    secrets_seen = {k.headers["x-api-key"] for k in r.upstreams["a"].keys}
    assert secrets_seen == {"sk-from-env", "sk-from-file"}
    rendered = repr(r.status())
    assert "sk-from" not in rendered


@pytest.mark.parametrize(("config", "message"), [
    ({"upstreams": [{"name": "a", "kind": "gemini"}]}, "kind must be one of"),
    ({"upstreams": [{"name": "a"}, {"name": "a"}]}, "unique"),
    ({"upstreams": [{"name": "a"}], "rules": [{"name": "r", "target": "zzz"}]},
     "unknown upstream 'zzz'"),
    ({"upstreams": [{"name": "a"}], "rules": [{"name": "r"}]}, "needs a target"),
    ({"upstreams": [{"name": "a"}], "rules": [{"name": "r", "target": "a",
                                               "match": {"colour": "red"}}]},
     "unknown match key"),
    ({"upstreams": [{"name": "a", "kind": "bedrock", "region": "us-east-1"}]},
     "needs [[credentials]]"),
    ({"upstreams": [{"name": "a"}], "state": "memcached://x"}, "[router] state: expected a redis://"),
    ({"upstreams": [{"name": "a"}], "affinity": "sticky"},
     "[router] affinity: expected one of 'session', 'principal', 'none', got 'sticky'"),
    ({"upstreams": [{"name": "a"}], "max_retries": -1},
     "[router] max_retries: expected a number >= 0"),
    ({"upstreams": [{"name": "a"}], "retry_ratio": "lots"},
     "[router] retry_ratio: expected a number"),
    ({"upstreams": [{"name": "a"}], "max_retrys": 2},
     "[router] max_retrys: unknown setting; did you mean `max_retries`?"),
    ({"upstreams": [{"name": "a"}], "rules": [{"name": "r", "target": "a", "fallbak": "a"}]},
     "rule 'r': unknown key(s) fallbak"),
])
def test_config_errors_say_what_is_wrong(config, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(config)


def test_env_overrides_are_coerced_and_checked():
    env = {"MIDWAY_ROUTER__MAX_RETRIES": "2", "MIDWAY_ROUTER__AFFINITY": "none",
           "MIDWAY_ROUTER__UPSTREAMS": '[{ name = "a", url = "http://127.0.0.1:9" }]'}
    settings = load_table(RouterSettings, "router", {"max_retries": 5}, env=env)
    assert (settings.max_retries, settings.affinity) == (2, "none")
    assert [u.name for u in settings.upstreams] == ["a"]
    with pytest.raises(ConfigError, match=re.escape(
            "MIDWAY_ROUTER__MAX_RETRIES: [router] max_retries: expected an integer, got 'x'")):
        load_table(RouterSettings, "router", {}, env={"MIDWAY_ROUTER__MAX_RETRIES": "x"})


def test_config_error_never_shows_a_secret(monkeypatch):
    monkeypatch.delenv("NOT_SET_ROUTER_KEY", raising=False)
    with pytest.raises(ValueError) as info:
        Router(parse({"upstreams": [{"name": "a", "keys": ["env:NOT_SET_ROUTER_KEY"]}]}))
    assert "NOT_SET_ROUTER_KEY is not set" in str(info.value)


def test_principal_upstream_scope_is_respected():
    rules = [{"name": "chain", "match": {"model": "claude-*"}, "target": "main",
              "fallback": ["cheap"]}]
    r = router(rules)
    scoped = Principal(id="key:ci", name="ci", kind="key", upstreams=("cheap",))
    assert choose(r, principal=scoped)[0].name == "cheap"
    assert choose(r)[0].name == "main"
    locked = Principal(id="key:x", name="x", kind="key", upstreams=("bulk",))
    with pytest.raises(MidwayError) as info:
        choose(r, principal=locked)
    assert info.value.status == 403


def test_subagent_rules_match_claude_code_s_agent_headers():
    r = router([{"name": "subagents", "match": {"agent": "*"}, "target": "cheap"},
                {"name": "under-reviewer", "match": {"parent_agent": "reviewer@*"},
                 "target": "bulk"}])
    main, _ = choose(r)
    sub, exchange = choose(r, headers={"x-claude-code-agent-id": "a9f3"})
    assert (main.name, sub.name) == ("main", "cheap")
    assert exchange.annotations["route"] == "subagents"
    # a parent alone (no agent id) is not "a subagent"; its own rule still sees it
    nested, _ = choose(r, headers={"x-claude-code-parent-agent-id": "reviewer@team"})
    assert nested.name == "bulk"


def test_an_agent_match_must_be_globs():
    with pytest.raises(ConfigError, match="agent must be a string or a list of strings"):
        parse({"upstreams": UPSTREAMS, "rules": [{"match": {"agent": 1}, "target": "main"}]})


def test_group_rule_matches_the_principals_groups_only():
    """`match = { group = ... }` holds when one of the principal's groups (from its key or
    its sign-in) matches; a request header naming a group changes nothing."""
    r = router([{"name": "ml-group", "match": {"group": ["ml-*", "research"]},
                 "target": "think"}])
    ml = Principal(id="key:ci", name="ci", kind="key", groups=("eng", "ml-platform"))
    research = Principal(id="oidc:ann", name="ann", kind="oidc", subject="ann",
                         groups=("research",))
    plain = Principal(id="key:bob", name="bob", kind="key", groups=("eng",))
    assert choose(r, principal=ml)[0].name == "think"
    assert choose(r, principal=research)[0].name == "think"
    assert choose(r, principal=plain)[0].name == "main"
    spoof = {"x-midway-groups": "research", "x-groups": "ml-platform", "groups": "research"}
    assert choose(r, headers=spoof, principal=plain)[0].name == "main"
    assert choose(r, headers=spoof)[0].name == "main"


def test_group_match_is_checked_in_config():
    with pytest.raises(ConfigError, match="group must be a string or a list of strings"):
        router([{"name": "g", "match": {"group": 3}, "target": "think"}])


def test_the_body_is_parsed_for_the_rules_without_being_kept():
    plain = Router(parse({"upstreams": UPSTREAMS[:1], "target": "main",
                          "rules": [{"name": "opus", "match": {"model": "claude-opus-*"},
                                     "target": "main"}]}))
    upstream, exchange = choose(plain, body(model="claude-opus-4-6"))
    assert exchange.annotations["route"] == "opus"
    assert upstream.model is None
    # read for the rules only: nothing after routing reads it, so no parsed tree is held
    assert not exchange.request.parsed
    # a body parsed before routing (by another plugin) is read, not parsed again
    exchange = make_exchange(body(model="claude-opus-4-6"))
    exchange.request.json["model"] = "claude-haiku-4-5"  # what that plugin left
    plain.choose(exchange)
    assert exchange.annotations["route"] == "default"


def test_the_body_is_parsed_once_when_the_attempt_reads_it_too():
    # RULES' background rule rewrites the model: the core rewrites the body, from its tree
    upstream, exchange = choose(router(), body(model="claude-haiku-4-5"))
    assert upstream.model == "claude-haiku-cheap"
    assert exchange.request.parsed


def test_a_rule_holds_only_when_every_condition_it_names_holds():
    match = {"model": "claude-sonnet-*", "path": "/v1/messages", "team": "search",
             "group": "ml-*", "principal": "bob", "headers": {"x-workload": "batch*"},
             "min_input_tokens": 100, "max_input_tokens": 1000, "thinking": False,
             "tools": False, "background": False}
    r = router([{"name": "all-of", "match": match, "target": "think"}])
    bob = Principal(id="key:bob", name="bob", team="search", kind="key", groups=("ml-x",))
    headers = {"x-api-key": "sk-ant-test", "x-workload": "batch-7"}
    text = "word " * 100  # about 150 tokens in all, by the estimate (4 bytes each)
    fits = body(messages=[{"role": "user", "content": text}])
    assert choose(r, fits, headers=headers, principal=bob)[0].name == "think"
    misses = {
        "model": (body(model="claude-opus-4-6", messages=fits["messages"]), headers, bob),
        "team": (fits, headers, Principal(id="key:bob", name="bob", team="ml", kind="key",
                                          groups=("ml-x",))),
        "group": (fits, headers, Principal(id="key:bob", name="bob", team="search",
                                           kind="key", groups=("eng",))),
        "principal": (fits, headers, Principal(id="key:al", name="al", team="search",
                                               kind="key", groups=("ml-x",))),
        "header": (fits, {"x-api-key": "sk-ant-test"}, bob),
        "min tokens": (body(messages=[{"role": "user", "content": "x"}]), headers, bob),
        "max tokens": (body(messages=[{"role": "user", "content": "x" * 8000}]), headers,
                       bob),
        "thinking": ({**fits, "thinking": {"type": "enabled", "budget_tokens": 1024}},
                     headers, bob),
        "tools": ({**fits, "tools": [{"name": "t", "input_schema": {"type": "object"}}]},
                  headers, bob),
        "background": (body(model="claude-haiku-4-5", messages=fits["messages"]), headers,
                       bob),
    }
    for condition, (payload, hdrs, principal) in misses.items():
        upstream, _ = choose(r, payload, headers=hdrs, principal=principal)
        assert upstream.name == "main", condition
    exchange = make_exchange(fits, headers=headers, principal=bob, path="/v1/complete")
    assert r.choose(exchange).name == "main"  # the path


# Raw bodies whose facts are easy to get wrong without a parse: base64 sources, keys spelled
# with \u escapes, a "model" twice (the parse keeps the last), invalid and tiny bodies.
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo" * 400}}
TRICKY_BODIES = [
    orjson.dumps(body()),
    orjson.dumps(body(messages=[{"role": "user", "content": [IMAGE]}])),
    orjson.dumps(body(messages=[{"role": "user", "content": [IMAGE]}])).replace(
        b'"data"', b'"\\u0064ata"'),
    orjson.dumps(body(messages=[{"role": "user", "content": [IMAGE]}])).replace(
        b'"data"', b'"d\\u0061t\\u0061"'),
    orjson.dumps(body(messages=[{"role": "user", "content": [IMAGE]}])).replace(
        b'"data"', b'"da\\u0074a"'),
    orjson.dumps(body(messages=[{"role": "user", "content": 'say "data" and \\u0064'}])),
    orjson.dumps(body(thinking={"type": "enabled", "budget_tokens": 1024},
                      tools=[{"name": "t", "input_schema": {"type": "object"}}])),
    orjson.dumps(body(thinking={"type": "disabled"}, tools=[])),
    b'{"model":"claude-haiku-4-5","max_tokens":8,"model":"claude-opus-4-6","messages":[]}',
    b'{"\\u006dodel":"claude-opus-4-6","max_tokens":8,"messages":[]}',
    b'{"model":"claude-opus-4-6","messages":[{"role":"user","content":"hi"}],}',
    b'{"model":"claude-opus-4-6","messages":"\\ud800"}',
    b'["model","claude-opus-4-6"]', b"{}", b"[]", b"{ }", b"", b"12", b"nul",
]


@pytest.mark.parametrize("raw", TRICKY_BODIES)
def test_facts_read_on_demand_match_the_parse(raw):
    parsed = _loads(raw)
    model = parsed.get("model") if isinstance(parsed, dict) else None
    config = parsed.get("thinking") if isinstance(parsed, dict) else None
    thinking = isinstance(config, dict) and config["type"] == "enabled"
    for tokens in (False, True):
        facts = Facts(make_exchange(raw), background_pattern(("claude-haiku-*",)),
                      tokens=tokens)
        # the estimate alone (key picking), then the rest; and the other way round
        assert facts.input_tokens == estimate_tokens(parsed, len(raw))
        assert facts.model == (model if isinstance(model, str) else None)
        assert facts.thinking is thinking
        assert facts.tools is (isinstance(parsed, dict) and bool(parsed.get("tools")))
        assert facts.background is (facts.model == "claude-haiku-4-5")
        other = Facts(make_exchange(raw), background_pattern(()), tokens=tokens)
        assert other.model == facts.model
        assert other.input_tokens == facts.input_tokens


def test_the_estimate_skips_the_parse_only_when_no_key_can_be_data():
    # a body with escapes is parsed: a key's letters could be \u escapes
    image = orjson.dumps(body(messages=[{"role": "user", "content": [IMAGE]}]))
    escaped = orjson.dumps(body(messages=[{"role": "user", "content": "two\nlines"}]))
    for raw, parses in ((orjson.dumps(body()), False), (image, True), (escaped, True),
                        (image.replace(b'"data"', b'"\\u0064ata"'), True), (b"{}", True)):
        facts = Facts(make_exchange(raw), background_pattern(()), tokens=True)
        assert facts.body_read is parses
    # images are left out of the estimate: far fewer tokens than bytes / 4
    assert Facts(make_exchange(image), background_pattern(())).input_tokens < len(image) // 8


def test_no_rule_on_the_body_and_one_key_a_pool_never_read_the_body():
    pooled = Router(parse({"upstreams": UPSTREAMS[:1], "target": "main",
                           "rules": [{"name": "team", "match": {"team": "search"},
                                      "target": "main"}]}))
    upstream, exchange = choose(pooled)
    assert upstream.name == "main" and exchange.annotations["route"] == "default"
    assert not exchange.state["router"].facts.body_read
    # a model rule reads it (and only it: the parse is not kept)
    plain = Router(parse({"upstreams": UPSTREAMS[:1], "target": "main",
                          "rules": [{"name": "opus", "match": {"model": "claude-opus-*"},
                                     "target": "main"}]}))
    upstream, exchange = choose(plain, body(model="claude-opus-4-6"))
    assert exchange.state["router"].facts.body_read
    assert exchange.annotations["route"] == "opus"


def test_a_pool_of_several_keys_weighs_the_estimate_without_a_parse():
    two = [{**UPSTREAMS[0], "keys": ["sk-main-1", "sk-main-2"]}]
    pooled = Router(parse({"upstreams": two, "target": "main"}))
    payload = body(messages=[{"role": "user", "content": "word " * 400}])
    upstream, exchange = choose(pooled, payload)
    facts = exchange.state["router"].facts
    assert not facts.body_read
    assert facts.input_tokens == estimate_tokens(payload, len(exchange.request.body)) > 400
    key = upstream.meta["router_key"]
    attempt = Attempt(number=1, id="x.1", upstream=upstream, started=0.0)
    pooled.sent(exchange, attempt)
    assert key.tokens_since_report == facts.input_tokens


def test_a_body_with_images_is_parsed_once_for_the_estimate_and_the_model(monkeypatch):
    import midway_router.rules as rules

    parses = []
    monkeypatch.setattr(rules, "_loads", lambda raw: parses.append(raw) or orjson.loads(raw))
    r = router([{"name": "big-opus", "match": {"model": "claude-opus-*",
                                               "min_input_tokens": 100}, "target": "long"}])
    image = body(model="claude-opus-4-6", messages=[{"role": "user", "content": [IMAGE]}])
    upstream, _ = choose(r, image)
    assert upstream.name == "main"  # the image is no input text: fewer than 100 tokens
    assert len(parses) == 1
    text = [{"role": "user", "content": "word " * 100}]
    upstream, _ = choose(r, body(model="claude-opus-4-6", messages=text))
    assert upstream.name == "long" and len(parses) == 2


@pytest.mark.parametrize(("globs", "model", "routed"), [
    (["*"], "claude-sonnet-4-6", "think"), (["*"], "", "think"), (["*"], "a\nb", "think"),
    (["*"], None, "main"), (["*"], 42, "main"),  # no model string: no match
    (["claude-opus-*", "*"], "x", "think"), (["claude-opus-*"], "x", "main")])
def test_a_glob_list_with_star_matches_any_model_string_and_only_one(globs, model, routed):
    # "*" is checked without its regex: the same answers as fnmatch's (?s:.*)\Z
    r = router(rules=[{"name": "any", "match": {"model": globs}, "target": "think"}])
    payload = body()
    if model is None:
        del payload["model"]
    else:
        payload["model"] = model
    assert choose(r, payload)[0].name == routed


def test_rules_read_the_principal_and_headers_of_the_exchange_they_route():
    r = router()
    team = Principal(id="k1", name="bob", team="search", kind="key")
    assert choose(r, principal=team)[0].name == "search"
    assert choose(r, headers={"x-workload": "batch-7"})[0].name == "bulk"
    assert choose(r, payload=body(model="claude-opus-4"),
                  principal=Principal(id="alice", name="alice", kind="key"))[0].name == "think"


@pytest.mark.parametrize("judged", [True, False])
def test_every_key_an_exchange_held_is_released_once_at_its_end(judged):
    """A key rested by a 429 is released when the retry is judged (or, unjudged, at the end
    with the rest); the end releases every hold left, each once."""
    from multidict import CIMultiDict, CIMultiDictProxy

    two = [{**UPSTREAMS[0], "keys": ["sk-main-1", "sk-main-2"]}]
    pooled = Router(parse({"upstreams": two, "target": "main"}))
    exchange = make_exchange(body())
    first = pooled.choose(exchange)
    attempt = Attempt(number=1, id="x.1", upstream=first, started=0.0)
    exchange.attempts.append(attempt)
    pooled.sent(exchange, attempt)
    attempt.status, attempt.headers = 429, CIMultiDictProxy(CIMultiDict())
    if judged:
        assert pooled.judge(exchange, attempt) is not None
    second = pooled.choose(exchange)
    assert second.meta["router_key"] is not first.meta["router_key"]
    retry = Attempt(number=2, id="x.2", upstream=second, started=0.0, status=200,
                    headers=CIMultiDictProxy(CIMultiDict()))
    exchange.attempts.append(retry)
    pooled.sent(exchange, retry)
    assert [k.in_flight for k in pooled.upstreams["main"].keys] == [1 - judged, 1] or \
        [k.in_flight for k in pooled.upstreams["main"].keys] == [1, 1 - judged]
    pooled.finish(exchange)
    assert [k.in_flight for k in pooled.upstreams["main"].keys] == [0, 0]
    assert exchange.state["router"].held == []


def test_a_routed_exchange_is_freed_when_let_go_without_the_cyclic_collector():
    """The router's state lives on the exchange; nothing in it may point back at the
    exchange, or every routed request waits for the cyclic collector (held memory under load)."""
    import gc
    import weakref

    r = router()
    exchange = make_exchange(body(model="claude-opus-4"),
                             principal=Principal(id="alice", name="alice", kind="key"))
    assert r.choose(exchange).name == "think"
    assert exchange.state["router"].facts.model == "claude-opus-4"
    gone = weakref.ref(exchange)
    gc.disable()
    try:
        del exchange
        assert gone() is None, "the exchange is kept alive by a reference cycle"
    finally:
        gc.enable()
