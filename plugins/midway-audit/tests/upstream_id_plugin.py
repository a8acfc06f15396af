"""Test-only plugin (``midway serve --plugin``): tells the upstream which midway request each
attempt belongs to, so audit records can be matched with what the upstream served."""

from midway import Attempt, Exchange, hookimpl


@hookimpl
def upstream_request(exchange: Exchange, attempt: Attempt) -> None:
    exchange.request.headers["x-audit-test-request"] = exchange.id
