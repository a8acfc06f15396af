"""The router's shared state (Redis) at start-up: a Redis that comes up within ``store_wait``
is used; one that stays away stops start-up with one line naming it."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from midway.storage import StoreUnavailable
from midway.storage.retry import STORE_WAIT
from midway.testing_services import PrivateRedis, free_port
from midway_router.shared import RedisState


def test_a_redis_started_during_the_wait_is_used(private_redis: PrivateRedis) -> None:
    private_redis.stop()
    messages: list[str] = []
    started: list[threading.Thread] = []

    class StartOnFirstRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())
            if not started and "retrying for up to" in record.getMessage():
                started.append(threading.Thread(target=private_redis.start))
                started[0].start()

    handler = StartOnFirstRetry()
    logger = logging.getLogger("midway.router")
    logger.addHandler(handler)
    applied: list[dict[str, object]] = []

    async def main() -> None:
        STORE_WAIT.set(60)
        state = RedisState(private_redis.url, "midway:test-wait")
        try:
            await state.start(applied.append)
            await state.redis.hset(state.table, "probe", b'{"k": "up"}')  # it is in use
            assert await state.redis.hget(state.table, "probe") == b'{"k": "up"}'
        finally:
            await state.close()

    try:
        asyncio.run(main())
    finally:
        logger.removeHandler(handler)
        for thread in started:
            thread.join()
    waits = [m for m in messages if "retrying for up to 60 s" in m]
    assert len(waits) == 1, messages
    assert waits[0].startswith(f"[router] state: Redis {private_redis.url} failed (")
    assert any("works again" in m for m in messages), messages


def test_a_redis_that_stays_away_is_one_line() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"

    async def main() -> None:
        STORE_WAIT.set(0.3)
        state = RedisState(url, "midway:test-wait")
        try:
            await state.start(lambda event: None)
        finally:
            await state.close()

    with pytest.raises(StoreUnavailable) as raised:
        asyncio.run(main())
    message = str(raised.value)
    assert message.startswith("[router] state: Redis redis://:***@127.0.0.1:")
    assert ": unreachable for 0.3 s (" in message and "hunter2" not in message
