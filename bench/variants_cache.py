"""midway-cache in the bench: exact hits ("json"/"stream": the same body every time, so every
request after the first is a hit), the cost of a miss ("unique-*": every body distinct, each
looked up, forwarded and stored), and the semantic layer's miss cost (every distinct last turn
embedded on CPU and compared within its partition)."""

VARIANTS = [
    *[dict(name=f"cache-hit-{workload}", plugins=["cache"], config={"cache": {}},
           workload=workload) for workload in ("json", "stream")],
    *[dict(name=f"cache-miss-{workload}", plugins=["cache"], config={"cache": {}},
           workload=workload) for workload in ("unique-json", "unique-stream")],
    dict(name="cache-semantic-miss-json", plugins=["cache"],
         config={"cache": {"semantic": True}}, workload="unique-json"),
    # Primed with one question, then asked it in other words: every request a semantic hit.
    dict(name="cache-semantic-hit-json", plugins=["cache"],
         config={"cache": {"semantic": True}}, workload="paraphrase-json"),
]
