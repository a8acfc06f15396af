"""midway-cache in the bench: exact hits ("json"/"stream": the same body every time, so every
request after the first is a hit), the cost of a miss ("unique-*": every body distinct, each
looked up, forwarded and stored), and the semantic layer's miss cost (every distinct last turn
embedded on CPU and compared within its partition). The cache is opt-in: every variant but
"cache-installed-off" opts every request in with a rule; that one measures the cache installed
with its defaults (no request asks for it: it must cost nothing)."""

EVERY_REQUEST = {"rules": [{"model": "*"}]}

VARIANTS = [
    dict(name="cache-installed-off", plugins=["cache"], config={"cache": {}},
         workload="json"),
    *[dict(name=f"cache-hit-{workload}", plugins=["cache"], config={"cache": EVERY_REQUEST},
           workload=workload) for workload in ("json", "stream")],
    *[dict(name=f"cache-miss-{workload}", plugins=["cache"], config={"cache": EVERY_REQUEST},
           workload=workload) for workload in ("unique-json", "unique-stream")],
    dict(name="cache-semantic-miss-json", plugins=["cache"],
         config={"cache": {**EVERY_REQUEST, "semantic": True}}, workload="unique-json"),
    # Primed with one question, then asked it in other words: every request a semantic hit.
    dict(name="cache-semantic-hit-json", plugins=["cache"],
         config={"cache": {**EVERY_REQUEST, "semantic": True}}, workload="paraphrase-json"),
]
