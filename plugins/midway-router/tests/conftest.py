from __future__ import annotations

import math
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

import midway_router
from midway.testing import FakeUpstream, RecordedRequest, Reply


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def key_of(rec: RecordedRequest) -> str:
    return rec.headers.get("x-api-key") or rec.headers.get("authorization", "")


class KeyLimiter:
    """Answers like Anthropic under a per-key request limit: ``per_window`` requests per
    ``window`` seconds (a "minute" shortened for tests), fixed windows, with the
    ``anthropic-ratelimit-requests-*`` headers on every answer and 429 + retry-after beyond."""

    def __init__(self, per_window: int, window: float, stream: bool | None = None,
                 report: bool = True) -> None:
        self.report = report  # False: no ratelimit headers, only 429 + retry-after
        self.per_window = per_window
        self.window = window
        self.stream = stream
        self.start = time.time()
        self.counts: Counter[tuple[str, int]] = Counter()
        self.served: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, rec: RecordedRequest) -> Reply:
        key = key_of(rec)
        now = time.time()
        index = int((now - self.start) // self.window)
        reset = self.start + (index + 1) * self.window
        with self.lock:
            used = self.counts[(key, index)]
            headers = {"anthropic-ratelimit-requests-limit": str(self.per_window),
                       "anthropic-ratelimit-requests-reset": rfc3339(reset)}
            if used >= self.per_window:
                self.refused[key] += 1
                headers["anthropic-ratelimit-requests-remaining"] = "0"
                headers["retry-after"] = str(max(1, math.ceil(reset - now)))
                return Reply(status=429, error_type="rate_limit_error",
                             error_message="Number of requests has exceeded your rate limit",
                             headers=headers)
            self.counts[(key, index)] = used + 1
            self.served[key] += 1
            headers["anthropic-ratelimit-requests-remaining"] = str(self.per_window - used - 1)
        return Reply(headers=headers if self.report else {}, stream=self.stream)


@pytest.fixture
def make_upstream():
    """More fake Anthropic APIs: ``make_upstream()`` → a started FakeUpstream (stopped after)."""
    started: list[FakeUpstream] = []

    def factory(shutdown_timeout: float = 0.2) -> FakeUpstream:
        server = FakeUpstream()
        # Stopping kills open streams quickly instead of letting them finish: a crash.
        server.runner_kwargs["shutdown_timeout"] = shutdown_timeout
        server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        if server._runner is not None:
            server.stop()


@pytest.fixture
def router_plugin():
    return ("router", midway_router)


def wait_idle(running, timeout: float = 10.0) -> None:
    """Wait until the proxy has finished every request (post_response ran)."""
    from midway.testing import wait_for

    router = running.midway.services["router"]
    wait_for(lambda: all(row["in_flight"] == 0 for row in router.status()), timeout)


def raw_post(url: str, body: dict, headers: dict | None = None, stream: bool = False):
    """POST with http.client: returns the open response (read it, then close ``.conn``)."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    hdrs = {"content-type": "application/json", "x-api-key": "client-key",
            "anthropic-version": "2023-06-01", **(headers or {})}
    conn.request("POST", parts.path, body=json.dumps(body).encode(), headers=hdrs)
    response = conn.getresponse()
    response.conn = conn
    return response
