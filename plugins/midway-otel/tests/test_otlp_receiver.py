"""midway → a real OTLP receiver (HTTP/protobuf and gRPC), driven by the official anthropic
SDK; and the OTLP relay."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anthropic
import httpx
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

import midway_otel
from midway.config import ConfigError
from midway.testing import Harness, Reply, free_port
from midway_otel import OTEL
from midway_otel.testing import attributes

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
USAGE = {"input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 1000,
         "cache_creation_input_tokens": 0}
ALICE = "mw-alice-0123456789abcdef"


def _turns(proxy: Any, fake_upstream: Any, turns: int) -> None:
    """A tool loop as Claude Code runs it: one streamed request per turn, each carrying the
    client's trace context and session id."""
    fake_upstream.reply(*[Reply(stream=True, usage=USAGE, stop_reason="tool_use",
                                content=[{"type": "tool_use", "name": "Bash",
                                          "input": {"command": "ls"}}])
                          for _ in range(turns - 1)],
                        Reply(stream=True, usage=USAGE, stop_reason="end_turn"))
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-test", max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "list files"}]
    for turn in range(turns):
        headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN[:-1]}{turn}-01",
                   "x-claude-code-session-id": "session-42"}
        with client.messages.stream(model="claude-opus-4-6", max_tokens=256,
                                    messages=messages, extra_headers=headers) as stream:
            message = stream.get_final_message()
        messages.append({"role": "assistant", "content": message.content})
        if message.stop_reason == "tool_use":
            messages.append({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": message.content[0].id,
                 "content": "a.txt"}]})


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_one_trace_per_turn_reaches_the_collector(protocol, receiver, fake_upstream,
                                                  midway_factory):
    endpoint = receiver.http_url if protocol == "http/protobuf" else receiver.grpc_url
    proxy = midway_factory(plugins=[midway_otel], config={"otel": {
        "endpoint": endpoint, "protocol": protocol, "headers": {"x-collector-token": "t0k"},
        "service_name": "gw-test"}})
    _turns(proxy, fake_upstream, 3)
    proxy.stop()  # shutdown flushes spans and metrics
    receiver.wait("traces")
    receiver.wait("metrics")
    chats = [(s, r) for s, r in receiver.spans() if s.name == "chat claude-opus-4-6"]
    assert len(chats) == 3
    for turn, (span, resource) in enumerate(sorted(chats, key=lambda c: c[0].start_time_unix_nano)):
        assert resource["service.name"] == "gw-test"
        assert span.trace_id.hex() == TRACE_ID
        assert span.parent_span_id.hex() == f"{CLIENT_SPAN[:-1]}{turn}"
        a = attributes(span.attributes)
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "anthropic"
        assert a["gen_ai.usage.input_tokens"] == 1012
        assert a["gen_ai.usage.cache_read.input_tokens"] == 1000
        assert a["gen_ai.response.finish_reasons"] == (
            ("end_turn",) if turn == 2 else ("tool_use",))
        assert a["gen_ai.conversation.id"] == "session-42"
        assert a["server.address"] == "127.0.0.1"
        assert [e.name for e in span.events] == ["gen_ai.first_chunk"]
    attempts = [s for s, _ in receiver.spans() if s.name.startswith("attempt ")]
    assert {s.parent_span_id for s in attempts} == {s.span_id for s, _ in chats}
    metrics = receiver.metrics()
    tokens = metrics["gen_ai.client.token.usage"]
    assert tokens.unit == "{token}"
    by_type = {attributes(p.attributes)["gen_ai.token.type"]: p
               for p in tokens.histogram.data_points}
    assert by_type["input"].sum == 3036 and by_type["input"].count == 3
    assert by_type["output"].sum == 15
    assert list(by_type["input"].explicit_bounds[:4]) == [1, 4, 16, 64]
    assert metrics["gen_ai.client.operation.duration"].unit == "s"
    assert metrics["gen_ai.client.operation.time_to_first_chunk"].unit == "s"
    # the collector's own header went out; nothing of the client's did
    for _, headers in receiver.received["traces"] + receiver.received["metrics"]:
        assert headers["x-collector-token"] == "t0k"
        assert "x-api-key" not in headers and "authorization" not in headers


# -- the relay ----------------------------------------------------------------------------------

def _export(forged: str | None = None) -> bytes:
    export = ExportLogsServiceRequest()
    entry = export.resource_logs.add()
    for key, value in (("service.name", "claude-code"), ("midway.principal.id", forged)):
        if value is not None:
            kv = KeyValue(key=key)
            kv.value.string_value = value
            entry.resource.attributes.append(kv)
    record = entry.scope_logs.add().log_records.add()
    record.body.string_value = "claude_code.api_request"
    return export.SerializeToString()


@pytest.fixture
def relay(receiver, midway_factory):
    return midway_factory(plugins=[midway_otel], config={"otel": {
        "relay": True, "relay_endpoints": [receiver.http_url],
        "relay_headers": {"authorization": "Bearer collector-secret"},
        "relay_max_bytes": 4096}},
        client_keys=[{"key": ALICE, "name": "alice", "team": "search"}])


def _post(proxy: Any, body: bytes, path: str = "/v1/logs", **headers: str) -> httpx.Response:
    hdrs = {"content-type": "application/x-protobuf", "x-api-key": ALICE, **headers}
    return httpx.post(proxy.url + path, content=body, headers=hdrs, timeout=10)


def test_the_relay_stamps_the_principal_and_forwards_no_client_credential(relay, receiver):
    response = _post(relay, _export(forged="root"), authorization="Bearer sneaky")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    [(export, headers)] = receiver.received["logs"]
    resource = attributes(export.resource_logs[0].resource.attributes)
    assert resource["midway.principal.name"] == "alice"
    assert resource["midway.principal.team"] == "search"
    assert resource["midway.principal.id"] != "root"  # what the client claimed is dropped
    assert resource["service.name"] == "claude-code"
    assert export.resource_logs[0].scope_logs[0].log_records[0].body.string_value == \
        "claude_code.api_request"
    assert headers["authorization"] == "Bearer collector-secret"
    assert ALICE not in repr(headers) and "sneaky" not in repr(headers)
    assert "x-api-key" not in headers


def test_a_gzipped_export_is_relayed(relay, receiver):
    import gzip

    response = _post(relay, gzip.compress(_export()), **{"content-encoding": "gzip"})
    assert response.status_code == 200
    [(export, _)] = receiver.received["logs"]
    assert attributes(export.resource_logs[0].resource.attributes)["service.name"] == \
        "claude-code"


def test_the_relay_refuses_what_it_should(relay, receiver):
    assert _post(relay, _export(), **{"x-api-key": "mw-wrong"}).status_code == 401
    too_big = _post(relay, b"\x0a" + b"\x00" * 5000)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["type"] == "request_too_large"
    json_export = _post(relay, b"{}", **{"content-type": "application/json"})
    assert json_export.status_code == 415 and "http/protobuf" in json_export.text
    assert _post(relay, b"\xff\xff\xff").status_code == 400
    assert httpx.get(relay.url + "/v1/traces", headers={"x-api-key": ALICE}).status_code == 405
    assert receiver.received["logs"] == []
    receiver.status = 503
    failed = _post(relay, _export(), path="/v1/traces")
    assert failed.status_code == 502  # retryable for the client's exporter


def test_the_relay_needs_client_keys(receiver):
    async def main() -> None:
        h = Harness(plugins=[midway_otel], config={"otel": {
            "relay": True, "relay_endpoints": [receiver.http_url]}})
        with pytest.raises(ConfigError, match=r"relay = true needs client keys \(\[keys\]"):
            await h.start()
    asyncio.run(main())


def test_config_check_names_an_unreachable_collector(receiver, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"

    async def check(config: dict[str, Any]) -> list[str]:
        h = Harness(plugins=[midway_otel], config={"otel": config}, data_dir=tmp_path,
                    client_keys=[{"key": ALICE, "name": "alice"}])
        return await midway_otel.config_check(h.midway)

    assert asyncio.run(check({"endpoint": receiver.http_url})) == []
    [problem] = asyncio.run(check({"endpoint": receiver.http_url, "relay": True,
                                   "relay_endpoints": [dead]}))
    assert problem.startswith(f"[otel] collector {dead} is unreachable: ")
    with pytest.raises(ConfigError, match="relay = true needs relay_endpoints"):
        asyncio.run(check({"relay": True}))


def test_a_collector_outage_is_logged_once_and_its_end_once(receiver, caplog):
    async def main() -> None:
        async with Harness(plugins=[midway_otel], config={"otel": {
                "endpoint": receiver.http_url, "timeout": "0.3s", "metrics": False}}) as h:
            provider = h.midway.services[OTEL].telemetry.tracer_provider
            receiver.status = 503
            for _ in range(3):
                await h.request()
                provider.force_flush()
            receiver.status = 200
            await h.request()
            provider.force_flush()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "otel" in r.name]
    assert lines == [
        f"otel: exporting spans to {receiver.http_url} failed; what cannot be sent is dropped "
        "until it answers (logged again when it does)",
        f"otel: exports to {receiver.http_url} work again"], caplog.text
    assert len(receiver.spans()) == 2  # the request after the outage, and its attempt
