"""The governance stack in the bench, on default settings: each plugin alone and all of them
together (``stack-*``: audit with bodies, billing with a budget, router, dashboard, the access
log, every store the embedded SQLite default in the data dir). The router needs upstreams to
route to: one upstream with one key, one rule (its smallest useful configuration); billing
needs a budget to enforce: one daily budget over everything. Everything else is the plugins'
defaults (audit's ``bodies = true`` and ``write_ahead = true`` included)."""

BUDGET = [{"scope": "all", "period": "day", "limit_usd": "1000000000", "name": "bench"}]
ROUTER = {"upstreams": [{"name": "anthropic", "url": "{upstream}", "keys": ["sk-ant-bench"]}],
          "rules": [{"name": "all", "match": {"model": "*"}, "target": "anthropic"}]}

VARIANTS = [
    *[dict(name=f"alone-{plugin}-{workload}", plugins=[plugin],
           config={plugin: config} if config else {}, workload=workload)
      for plugin, config in (("audit", {}), ("billing", {"budgets": BUDGET}),
                             ("router", ROUTER), ("dashboard", {}))
      for workload in ("json", "stream")],
    *[dict(name=f"stack-{workload}", plugins=["audit", "billing", "router", "dashboard"],
           config={"billing": {"budgets": BUDGET}, "router": ROUTER}, workload=workload)
      for workload in ("json", "stream")],
]
