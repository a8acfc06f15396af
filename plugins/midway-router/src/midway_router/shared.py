"""Key and upstream health shared between midway instances through Redis.

Every instance keeps the full state in memory (the routing decision never waits on the
network). A rest, a disabled key or an upstream going down is written to a Redis hash (for
instances that start later) and published (for the running ones), which apply it at once:
a key resting on one instance rests on all. Remaining-quota figures and in-flight counts stay
per instance; each instance also publishes its status snapshot for ``midway router status``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from midway.config import ConfigError
from midway.storage import mask, ping_redis

log = logging.getLogger("midway.router")

Apply = Callable[[dict[str, Any]], None]


class MemoryState:
    """One instance: nothing to share."""

    async def start(self, apply: Apply) -> None:
        return None

    async def close(self) -> None:
        return None

    def publish(self, event: dict[str, Any]) -> None:
        return None

    async def write_status(self, instance: str, payload: bytes, ttl: float) -> None:
        return None

    async def clear_status(self, instance: str) -> None:
        return None


class RedisState:
    """Shared through Redis (``state = "redis://..."``)."""

    def __init__(self, url: str, prefix: str) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise ConfigError("[router] state is a Redis URL but the redis package is "
                                    "missing: pip install 'midway-router[redis]'") from None

        self.url = url
        self.prefix = prefix
        # A connect timeout, no read timeout: the event channel's reads wait for as long as
        # the other instances have nothing to say.
        self.redis: Any = aioredis.from_url(url, socket_connect_timeout=5.0)
        self.channel = f"{prefix}:events"
        self.table = f"{prefix}:health"
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: Any = None

    async def start(self, apply: Apply) -> None:
        # Fails start-up (after store_wait, in one line) when Redis is unreachable: silently
        # unshared state would let every instance hammer a key the others know is resting.
        await ping_redis(self.redis, f"[router] state: Redis {mask(self.url)}", log=log)
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.channel)
        for raw in (await self.redis.hgetall(self.table)).values():
            apply(orjson.loads(raw))
        self._listener = asyncio.create_task(self._listen(apply))

    async def _listen(self, apply: Apply) -> None:
        while True:
            try:
                async for message in self._pubsub.listen():
                    if message.get("type") == "message":
                        apply(orjson.loads(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("router: lost the Redis event channel; resubscribing",
                            exc_info=True)
                await asyncio.sleep(1.0)
                try:
                    await self._pubsub.subscribe(self.channel)
                except Exception:
                    log.debug("router: resubscribe failed", exc_info=True)

    def publish(self, event: dict[str, Any]) -> None:
        """Fire and forget: a Redis hiccup must not fail or slow a request."""
        task = asyncio.create_task(self._publish(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, event: dict[str, Any]) -> None:
        data = orjson.dumps(event)
        field = f"{event['k']}:{event.get('upstream')}:{event.get('fp')}"
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self.table, field, data)
                pipe.publish(self.channel, data)
                await pipe.execute()
        except Exception:
            log.warning("router: could not share %s state through Redis", event["k"],
                        exc_info=True)

    async def write_status(self, instance: str, payload: bytes, ttl: float) -> None:
        try:
            await self.redis.set(f"{self.prefix}:status:{instance}", payload,
                                 px=int(ttl * 1000))
        except Exception:
            log.warning("router: could not publish status to Redis", exc_info=True)

    async def clear_status(self, instance: str) -> None:
        try:
            await self.redis.delete(f"{self.prefix}:status:{instance}")
        except Exception:
            log.warning("router: could not remove status from Redis", exc_info=True)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()
        await self.redis.aclose()


def make(url: str | None, prefix: str) -> MemoryState | RedisState:
    return RedisState(url, prefix) if url else MemoryState()
