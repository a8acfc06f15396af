"""The plugin's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge("midway_audit_queue_depth",
                                 "Audit records waiting to be written.", registry=registry)
        self.written = Counter("midway_audit_records_written",
                               "Audit records committed to the store.", registry=registry)
        self.dropped = Counter("midway_audit_records_dropped",
                               "Audit records dropped (queue full with on_full=drop, or a "
                               "store still failing when shutdown gave up).", ["reason"],
                               registry=registry)
        self.write_errors = Counter("midway_audit_write_errors",
                                    "Failed batch writes (retried).", registry=registry)
        self.intents = Counter("midway_audit_intents",
                               "Write-ahead intents committed (ok) or not (error).",
                               ["result"], registry=registry)
        self.recovered = Counter("midway_audit_records_recovered",
                                 "Records written (at start-up, every recover_interval, "
                                 "or when the relay died) for requests an instance that "
                                 "stopped (kill -9) left unrecorded.", registry=registry)
        self.batch_seconds = Histogram("midway_audit_batch_seconds",
                                       "Time to prepare and commit one batch.",
                                       buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                0.5, 1, 2.5, 10), registry=registry)
