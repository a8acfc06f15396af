"""Test-only plugin (``midway serve --plugin``): tells the fake upstream which midway attempt
each request is, so ledger rows can be matched with what the upstream served."""

from midway import Attempt, Exchange, hookimpl


@hookimpl
def upstream_request(exchange: Exchange, attempt: Attempt) -> None:
    exchange.request.headers["x-hardening-attempt"] = attempt.id
