"""midway-audit in the bench: every request recorded with both bodies (stream answers
reassembled) into the default SQLite store, redaction on."""

VARIANTS = [
    dict(name=f"audit-{workload}", plugins=["audit"],
         config={"audit": {"bodies": True, "store": "sqlite:///{data_dir}/audit.db"}},
         workload=workload)
    for workload in ("json", "stream")
]
