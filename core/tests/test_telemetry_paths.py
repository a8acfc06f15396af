"""Claude Code's own OTLP telemetry is never forwarded to the model vendor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest

from midway.testing import FakeUpstream, RunningMidway


@pytest.mark.parametrize("path", ["/v1/logs", "/v1/metrics", "/v1/traces", "/V1/Traces"])
def test_telemetry_is_answered_locally_and_never_forwarded(
        midway_factory: Callable[..., RunningMidway], fake_upstream: FakeUpstream,
        path: str) -> None:
    running = midway_factory()

    async def go() -> tuple[int, dict[str, object]]:
        headers = {"x-api-key": "sk-ant-x", "content-type": "application/x-protobuf"}
        async with aiohttp.ClientSession() as session, \
                session.post(running.url + path, data=b"\x0a\x00", headers=headers) as resp:
            return resp.status, await resp.json()

    status, body = asyncio.run(go())
    if path == "/V1/Traces":  # another spelling of a telemetry path: refused, not forwarded
        assert status == 400
    else:
        assert status == 404
        assert body["error"]["type"] == "not_found_error"  # type: ignore[index]
        assert "[otel] relay" in body["error"]["message"]  # type: ignore[index]
    assert fake_upstream.requests == []
