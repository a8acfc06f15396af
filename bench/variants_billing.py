"""midway-billing in the bench: ledger only (write-ahead + settle per request, SQLite WAL in
the data dir), and with a hard budget so every request also reserves and settles a counter."""

BUDGET = [{"scope": "all", "period": "day", "limit_usd": "1000000000", "name": "bench"}]

VARIANTS = [
    *[dict(name=f"billing-{workload}", plugins=["billing"],
           config={"billing": {"reconcile_interval": 0}}, workload=workload)
      for workload in ("json", "stream")],
    *[dict(name=f"billing-budget-{workload}", plugins=["billing"],
           config={"billing": {"reconcile_interval": 0, "budgets": BUDGET}},
           workload=workload)
      for workload in ("json", "stream")],
]
