"""midway-audit in the bench: every request recorded with both bodies (stream answers
reassembled) into the default SQLite store, redaction on; write-ahead intents on (the
default) and, to measure what they cost, off. ``floor-*``: the least any plugin recording
bodies costs the relay (floor_plugin.py), for reference."""

from pathlib import Path

VARIANTS = [
    dict(name=f"audit-{workload}{suffix}", plugins=["audit"],
         config={"audit": {"bodies": True, "store": "sqlite:///{data_dir}/audit.db",
                           "write_ahead": write_ahead}},
         workload=workload)
    for workload in ("json", "stream")
    for suffix, write_ahead in (("", True), ("-no-wal", False))
]

VARIANTS += [
    dict(name=f"floor-{workload}", plugins=[], workload=workload,
         extra=[str(Path(__file__).with_name("floor_plugin.py"))])
    for workload in ("json", "stream")
]
