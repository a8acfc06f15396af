"""midway-otel in the bench: a span with its attempt child and four histogram points per
request, exported over OTLP/HTTP in batches. The collector is the bench's upstream, which
answers every POST with 200: each batch is encoded and posted as to a real collector."""

VARIANTS = [
    dict(name=f"otel-{workload}", plugins=["otel"],
         config={"otel": {"endpoint": "{upstream}", "metric_interval": "5s"}},
         workload=workload)
    for workload in ("json", "stream")
]
