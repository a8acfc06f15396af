"""Billing with its store away (no spend limits): an attempt whose ledger row cannot be written
ahead is never sent upstream; the client gets a 503 saying why, the log one line for the outage
and one for its end, and requests go through again once the store is back."""

from __future__ import annotations

import logging
from typing import Any

import anthropic
import pytest
from helpers import PLUGIN, ledger


def test_an_unwritable_ledger_refuses_with_503_and_sends_nothing(
        midway_factory: Any, fake_upstream: Any, private_postgres: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "midway.billing")
    running = midway_factory(plugins=[PLUGIN], config={"billing": {
        "store": private_postgres.dsn, "reconcile_interval": 0}})
    client = anthropic.Anthropic(base_url=running.url, api_key="sk-ant-test", max_retries=0)
    ask = {"model": "claude-haiku-4-5", "max_tokens": 5,
           "messages": [{"role": "user", "content": "x"}]}
    client.messages.create(**ask)
    ledger(running, 1)
    sent = len(fake_upstream.fake.messages_requests)
    private_postgres.stop("fast")
    try:
        for _ in range(2):
            with pytest.raises(anthropic.InternalServerError) as info:
                client.messages.create(**ask)
            assert info.value.status_code == 503
            error = info.value.response.json()["error"]
            assert error["type"] == "api_error"
            assert error["message"].startswith("midway could not record this request in its "
                                               "billing ledger")
            assert private_postgres.dsn.split("@")[1] not in error["message"]  # no host named
        assert len(fake_upstream.fake.messages_requests) == sent  # nothing went out unrecorded
        assert caplog.text.count("billing: writing attempts ahead failed") == 1
    finally:
        private_postgres.start()
    client.messages.create(**ask)
    assert len(fake_upstream.fake.messages_requests) == sent + 1
    assert "billing: writing attempts ahead works again after 2 failed attempt(s)" in caplog.text
