"""The fake upstream's Message Batches API, read by the official SDK as it reads Anthropic's."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from midway.testing import FakeUpstream, Reply


def test_sdk_round_trip(fake_upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=fake_upstream.url, api_key="sk-ant-test",
                                 max_retries=0)
    fake_upstream.reply(Reply(usage={"input_tokens": 7, "output_tokens": 3}),
                        Reply(status=529, error_type="overloaded_error"))
    batch = client.messages.batches.create(requests=[  # type: ignore[list-item]
        {"custom_id": f"r{i}", "params": {"model": "claude-haiku-4-5", "max_tokens": 5,
                                          "messages": [{"role": "user", "content": "hi"}]}}
        for i in range(2)])
    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 2
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.results_url
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (1, 1)
    assert [b.id for b in client.messages.batches.list()] == [batch.id]
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["r0"].type == "succeeded"
    assert results["r0"].message.usage.output_tokens == 3  # type: ignore[union-attr]
    assert results["r1"].type == "errored"
    assert results["r1"].error.error.type == "overloaded_error"  # type: ignore[union-attr]
    client.messages.batches.delete(batch.id)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


def test_refuses_what_the_api_refuses(fake_upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=fake_upstream.url, api_key="sk-ant-test",
                                 max_retries=0)
    params = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}
    for requests in ([], [{"custom_id": "bad id!", "params": params}],
                     [{"custom_id": "a", "params": params}, {"custom_id": "a", "params": params}]):
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    fake_upstream.fake.batches.hold = True
    batch = client.messages.batches.create(requests=[  # type: ignore[list-item]
        {"custom_id": "a", "params": params}])
    assert client.messages.batches.retrieve(batch.id).results_url is None
    early = httpx.get(f"{fake_upstream.url}/v1/messages/batches/{batch.id}/results")
    assert early.status_code == 400 and early.json()["error"]["type"] == "invalid_request_error"
    assert client.messages.batches.cancel(batch.id).processing_status == "ended"
