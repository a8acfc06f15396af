"""midway-router in the bench: 3 upstreams (pooled keys) and 20 rules, the request matching
only the last one, so every decision walks the whole list."""

from typing import Any

UPSTREAMS = [{"name": f"pool{i}", "url": "{upstream}",
              "keys": [f"sk-ant-bench-{i}-{k}" for k in range(3)]} for i in range(3)]

_MISSES: list[dict[str, Any]] = [
    {"model": "claude-haiku-*"}, {"model": ["claude-opus-3*", "claude-2*"]},
    {"team": "search"}, {"principal": "batch-*"}, {"headers": {"x-workload": "batch*"}},
    {"min_input_tokens": 150_000}, {"thinking": True}, {"tools": False},
    {"background": True}, {"path": "/v1/messages/count_tokens"},
    {"model": "claude-sonnet-3*"}, {"headers": {"x-team": "platform"}},
    {"team": ["ml", "infra"]}, {"model": "gpt-*"}, {"max_input_tokens": 100},
    {"principal": "alice"}, {"headers": {"x-priority": "low"}}, {"model": "*-latest"},
    {"thinking": True, "tools": True},
]
RULES = [{"name": f"miss{i}", "match": match, "target": f"pool{i % 3}"}
         for i, match in enumerate(_MISSES)]
RULES.append({"name": "sonnet", "match": {"model": "claude-sonnet-*", "tools": True},
              "targets": ["pool0", "pool1", "pool2"], "balance": "least-busy",
              "fallback": ["pool0"]})

VARIANTS = [
    dict(name=f"router-{workload}", plugins=["router"],
         config={"router": {"upstreams": UPSTREAMS, "rules": RULES, "target": "pool0",
                            "status_interval": 1.0}},
         workload=workload)
    for workload in ("json", "stream")
]
