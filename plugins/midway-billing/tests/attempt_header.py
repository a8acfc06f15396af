"""Test-only plugin: tells the fake upstream which midway attempt each request is."""

from midway import hookimpl


@hookimpl
def upstream_request(exchange, attempt):
    exchange.request.headers["x-test-attempt"] = attempt.id
