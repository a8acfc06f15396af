"""Shared by the tests: reading billing's state out of a running midway."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import midway_billing
from midway import Exchange, Response, Retry, hookimpl
from midway.testing import RunningMidway, wait_for
from midway_billing.plugin import Billing


def billing_of(running: RunningMidway) -> Billing:
    service = running.midway.services["billing"]
    assert isinstance(service, Billing)
    return service


def ledger(running: RunningMidway, count: int | None = None) -> list[dict[str, Any]]:
    """The ledger, once it holds ``count`` rows and none pending (post_response runs after
    the client has its last byte)."""
    def rows() -> list[dict[str, Any]]:
        return running.call(billing_of(running).store.rows())

    if count is not None:
        wait_for(lambda: len(found := rows()) == count and
                 all(r["state"] != "pending" for r in found))
    return rows()


def retry_overloaded() -> SimpleNamespace:
    """A judge that retries 529 answers (as the router would)."""

    @hookimpl
    def upstream_response(attempt: Any) -> Retry | None:
        return Retry(reason="overloaded") if attempt.status == 529 else None

    return SimpleNamespace(__name__="retrier", upstream_response=upstream_response)


def fake_cache(answer: bytes) -> SimpleNamespace:
    """Answers every request as the cache plugin does on a hit (tryfirst, annotated)."""

    @hookimpl(tryfirst=True)
    def pre_request(exchange: Exchange) -> Response:
        exchange.annotations["cache"] = "hit"
        return Response(status=200, body=answer)

    return SimpleNamespace(__name__="cache", pre_request=pre_request)


PLUGIN = ("billing", midway_billing)
