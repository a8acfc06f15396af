"""midway-dashboard in the bench: its only per-request work is one post_response that appends
a small record to the live-traffic window (nobody polls the dashboard during the run)."""

VARIANTS = [
    dict(name=f"dashboard-{workload}", plugins=["dashboard"], config={}, workload=workload)
    for workload in ("json", "stream")
]
