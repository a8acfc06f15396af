"""Fixtures: midway with the audit plugin on SQLite or on a throwaway PostgreSQL schema."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import midway_audit
from midway.testing import RunningMidway


@pytest.fixture
def pg_config(postgres_dsn: str, pg_schema_factory: Callable[..., str]) -> dict[str, Any]:
    """An audit config on a schema of its own (one per test, so chains do not mix), which the
    store creates."""
    return {"store": postgres_dsn, "schema": pg_schema_factory(create=False)}


@pytest.fixture
def audited(midway_factory: Callable[..., RunningMidway]) -> Callable[..., RunningMidway]:
    """``audited(extra_plugins=[...], **audit_config)`` → a running midway with the plugin."""

    def start(extra_plugins: list[Any] | None = None, **audit: Any) -> RunningMidway:
        return midway_factory(plugins=[*(extra_plugins or []), ("audit", midway_audit)],
                              config={"audit": audit})

    return start


def service(running: RunningMidway) -> Any:
    return running.midway.services["audit"]


def records(running: RunningMidway, **filters: Any) -> list[dict[str, Any]]:
    return running.call(service(running).query(limit=100_000, **filters))


def get(running: RunningMidway, request_id: str) -> dict[str, Any] | None:
    return running.call(service(running).get(request_id))


def committed(running: RunningMidway) -> int:
    return int(service(running).status()["written"])


def data_dir(running: RunningMidway) -> Path:
    return Path(running.midway.settings.data_dir)


HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


async def abandon_stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                         after: bytes = b"text_delta") -> str:
    """Start a stream, read until ``after`` shows up, then drop the connection."""
    async with session.post(f"{url}/v1/messages", json=body, headers=HEADERS) as resp:
        midway_id = resp.headers["x-midway-request-id"]
        seen = b""
        async for chunk in resp.content.iter_any():
            seen += chunk
            if after in seen:
                break
        resp.close()  # closes the connection itself, not just this response
    return midway_id


def flush(running: RunningMidway) -> None:
    """Run the plugin's shutdown: drain the queue and close the store (the server goes on)."""
    running.call(midway_audit.shutdown(running.midway))


def reopen(running: RunningMidway) -> None:
    """Start the plugin again after :func:`flush` (a fresh writer on the same store)."""
    running.call(midway_audit.startup(running.midway))
