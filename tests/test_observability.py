"""/metrics with every plugin installed, and the JSON access log, from a real `midway serve`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson

from midway.testing import free_port, wait_for, wait_listening

DOC = Path(__file__).resolve().parents[1] / "docs" / "observability.md"


def test_metrics_and_access_log_with_every_plugin(fake_upstream, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MIDWAY_PLUGINS"}
    env.update({"MIDWAY_LOG_FORMAT": "json", "MIDWAY_ACCESS_LOG": "true"})
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "midway.cli", "serve", "--port", str(port), "--upstream",
             fake_upstream.url, "--data-dir", str(tmp_path / "data")], env=env, stderr=log)
    try:
        wait_listening(port, timeout=30)
        body = orjson.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8,
                             "messages": [{"role": "user", "content": "metrics\r\nplease"}]})
        for _ in range(2):  # a miss, then a cache hit
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/messages", data=body, method="POST",
                headers={"x-api-key": "sk-ant-observability-canary",
                         "x-midway-cache": "use"})  # the cache is opt-in
            with urllib.request.urlopen(request, timeout=10) as resp:
                assert resp.status == 200
        text = ""

        def scraped() -> bool:
            nonlocal text
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            ok = sum(float(v) for v in re.findall(
                r'^midway_requests_total\{[^}]*status="200"[^}]*\} (\S+)$', text, flags=re.M))
            return "midway_audit_records_written_total 2.0" in text and ok == 2
        wait_for(scraped, timeout=15)
        for family in ("midway_request_duration_seconds_bucket", "midway_ttfb_seconds_bucket",
                       "midway_inflight_requests", "midway_open_streams", "midway_tokens_total",
                       "midway_billing_spend_usd", "midway_cache_lookups",
                       "midway_audit_queue_depth", "midway_router_routed"):
            assert family in text, family
        assert "sk-ant-observability-canary" not in text
        # docs/observability.md names exactly the families a scrape shows (#19 item 18).
        scraped_families = set(re.findall(r"^# TYPE (midway_\w+) ", text, flags=re.M))
        # prometheus-client's automatic `_created` series are not families of their own.
        scraped_families = {f for f in scraped_families if not f.endswith("_created")}
        documented = set(re.findall(r"`(midway_\w+)`", DOC.read_text()))
        documented -= {"midway_myplugin_hits"}  # the example in the page
        assert scraped_families == documented, (
            f"missing from the docs: {sorted(scraped_families - documented)}; "
            f"not exposed: {sorted(documented - scraped_families)}")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    lines = [json.loads(line.split("midway.access: ", 1)[1])
             for line in log_path.read_text().splitlines() if "midway.access: " in line]
    assert len(lines) == 2
    assert {"request_id", "principal", "model", "status", "ttfb_ms", "total_ms",
            "input_tokens", "output_tokens"} <= set(lines[0])
    # A line is written once its exchange's post_response hooks are done: the hit, served as
    # soon as the cache stored the miss's answer, may be logged before the miss.
    by_answer = {line["answered_by"]: line for line in lines}
    assert set(by_answer) == {None, "cache"}
    assert by_answer[None]["model"] == by_answer["cache"]["model"] == "claude-sonnet-4-6"
    assert "canary" not in log_path.read_text()
