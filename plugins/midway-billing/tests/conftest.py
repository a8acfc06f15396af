"""Fixtures: a fresh PostgreSQL schema per test (the server is shared with other suites)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import asyncpg
import pytest

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


async def _execute(sql: str) -> None:
    # Fails loudly when PostgreSQL is absent: these tests need the real server.
    con = await asyncpg.connect(PG_DSN)
    try:
        await con.execute(sql)
    finally:
        await con.close()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    schema = f"t_billing_{secrets.token_hex(6)}"
    asyncio.run(_execute(f'CREATE SCHEMA "{schema}"'))
    yield schema
    asyncio.run(_execute(f'DROP SCHEMA "{schema}" CASCADE'))
