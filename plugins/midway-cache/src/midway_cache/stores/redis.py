"""A store shared by many midway instances: Redis.

Layout under ``key_prefix`` (P):

* ``P e:<key>`` — the entry (meta JSON, a NUL byte, the message JSON), expiring with its TTL;
* ``P lru`` — sorted set of keys by last access, ``P size`` — hash of their sizes,
  ``P bytes`` — their total: the LRU cap is enforced from these;
* ``P t:<tenant>`` — set of a tenant's keys (``clear --principal``);
* ``P s:<partition>`` — hash of key → (meta JSON, NUL, float32 vector) for the semantic layer.
  Vectors are compared in this process (no RediSearch module needed);
* ``P stats`` — hash of counters; ``P lock:<key>`` — the fill lock (``SET NX PX``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from midway_cache.stores.base import COUNTERS, Candidate, Entry, empty_stats

log = logging.getLogger("midway.cache")


class RedisStore:
    def __init__(self, url: str, prefix: str, max_bytes: int, max_entries: int) -> None:
        self.url = url
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._redis: Any = None

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def open(self) -> None:
        import redis.asyncio as aioredis

        from midway.storage import mask, ping_redis
        from midway_cache.stores import LABEL

        # Bounded waits: an unreachable Redis bypasses the cache instead of holding requests.
        self._redis = aioredis.from_url(self.url, decode_responses=False,
                                        socket_connect_timeout=2.0, socket_timeout=5.0)
        await ping_redis(self._redis, f"{LABEL}: Redis {mask(self.url)}", log=log)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


    async def ping(self) -> str | None:
        from midway.storage import describe, mask

        try:
            await self._redis.ping()
        except Exception as exc:
            return f"{mask(self.url)}: {describe(exc)}"
        return None

    async def get(self, key: str, now: float) -> Entry | None:
        raw = await self._redis.get(self._k("e", key))
        if raw is None:
            return None
        meta_raw, _, body = raw.partition(b"\0")
        meta = orjson.loads(meta_raw)
        if meta.get("expires_at") is not None and meta["expires_at"] <= now:
            return None
        return Entry.from_body(body, key=key, tenant=meta["tenant"],
                               partition=meta.get("partition"), created_at=meta["created_at"],
                               expires_at=meta.get("expires_at"), prompt=meta.get("prompt"),
                               cost_usd=meta.get("cost_usd"))

    async def put(self, entry: Entry) -> None:
        meta = {"tenant": entry.tenant, "partition": entry.partition,
                "created_at": entry.created_at, "expires_at": entry.expires_at,
                "prompt": entry.prompt, "cost_usd": entry.cost_usd}
        ttl_ms = None
        if entry.expires_at is not None:
            ttl_ms = max(1, int((entry.expires_at - entry.created_at) * 1000))
        r = self._redis
        old = await r.hget(self._k("size"), entry.key)
        async with r.pipeline(transaction=True) as pipe:
            pipe.set(self._k("e", entry.key), orjson.dumps(meta) + b"\0" + entry.body, px=ttl_ms)
            pipe.zadd(self._k("lru"), {entry.key: entry.created_at})
            pipe.hset(self._k("size"), entry.key, entry.size)
            pipe.incrby(self._k("bytes"), entry.size - int(old or 0))
            pipe.sadd(self._k("t", entry.tenant), entry.key)
            if entry.partition and entry.vector is not None:
                cand = orjson.dumps({"prompt": entry.prompt, "tool_use": entry.tool_use,
                                     "expires_at": entry.expires_at})
                pipe.hset(self._k("s", entry.partition), entry.key, cand + b"\0" + entry.vector)
                if ttl_ms is not None:
                    pipe.pexpire(self._k("s", entry.partition), ttl_ms)
            await pipe.execute()
        await self._evict()

    async def _evict(self) -> None:
        r = self._redis
        while True:
            count = await r.zcard(self._k("lru"))
            size = int(await r.get(self._k("bytes")) or 0)
            over_bytes = self.max_bytes and size > self.max_bytes
            over_count = self.max_entries and count > self.max_entries
            if not (over_bytes or over_count):
                return
            n = max(1, count - self.max_entries if over_count else 0,
                    count // 20 if over_bytes else 0)
            keys = [k.decode() for k in await r.zrange(self._k("lru"), 0, n - 1)]
            if not keys:
                return
            await self._delete(keys)

    async def _delete(self, keys: list[str]) -> int:
        """Delete entries and their bookkeeping; returns how many entries existed."""
        r = self._redis
        sizes = await r.hmget(self._k("size"), keys)
        metas = await r.mget([self._k("e", k) for k in keys])
        async with r.pipeline(transaction=True) as pipe:
            for key, raw in zip(keys, metas, strict=True):
                if raw is not None:
                    meta = orjson.loads(raw.partition(b"\0")[0])
                    pipe.srem(self._k("t", meta["tenant"]), key)
                    if meta.get("partition"):
                        pipe.hdel(self._k("s", meta["partition"]), key)
            pipe.delete(*[self._k("e", k) for k in keys])
            pipe.zrem(self._k("lru"), *keys)
            pipe.hdel(self._k("size"), *keys)
            pipe.decrby(self._k("bytes"), sum(int(s or 0) for s in sizes))
            results = await pipe.execute()
        deleted: int = results[-4]
        return deleted

    async def candidates(self, partition: str, now: float) -> list[Candidate]:
        found = []
        for key, value in (await self._redis.hgetall(self._k("s", partition))).items():
            meta_raw, _, vector = value.partition(b"\0")
            meta = orjson.loads(meta_raw)
            if meta.get("expires_at") is not None and meta["expires_at"] <= now:
                continue
            found.append(Candidate(key=key.decode(), prompt=meta.get("prompt") or "",
                                   tool_use=bool(meta.get("tool_use")), vector=vector))
        return found

    async def record(self, touched: dict[str, float], counters: dict[str, float]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            if touched:
                pipe.zadd(self._k("lru"), touched, xx=True)
            for name, value in counters.items():
                pipe.hincrbyfloat(self._k("stats"), name, value)
            await pipe.execute()

    async def stats(self) -> dict[str, Any]:
        r = self._redis
        stats = empty_stats()
        stats["entries"] = await r.zcard(self._k("lru"))
        stats["bytes"] = int(await r.get(self._k("bytes")) or 0)
        for name, value in (await r.hgetall(self._k("stats"))).items():
            name = name.decode()
            if name in COUNTERS:
                stats[name] = float(value) if name == "saved_usd" else int(float(value))
        return stats

    async def clear(self, tenant: str | None = None) -> int:
        r = self._redis
        if tenant is not None:
            keys = [k.decode() for k in await r.smembers(self._k("t", tenant))]
            return await self._delete(keys) if keys else 0
        count = int(await r.zcard(self._k("lru")))
        batch = []
        async for name in r.scan_iter(match=self.prefix + "*", count=500):
            if not name.endswith(b"stats"):
                batch.append(name)
            if len(batch) >= 500:
                await r.delete(*batch)
                batch = []
        if batch:
            await r.delete(*batch)
        return count

    async def purge(self, now: float) -> int:
        # Entries expire by themselves; drop the bookkeeping of those that did.
        r = self._redis
        keys = [k.decode() for k in await r.zrange(self._k("lru"), 0, -1)]
        gone = []
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            exists = await r.mget([self._k("e", k) for k in chunk])
            gone += [k for k, v in zip(chunk, exists, strict=True) if v is None]
        if gone:
            sizes = await r.hmget(self._k("size"), gone)
            async with r.pipeline(transaction=True) as pipe:
                pipe.zrem(self._k("lru"), *gone)
                pipe.hdel(self._k("size"), *gone)
                pipe.decrby(self._k("bytes"), sum(int(s or 0) for s in sizes))
                await pipe.execute()
        return len(gone)

    async def lock(self, key: str, ttl: float) -> bool:
        return bool(await self._redis.set(self._k("lock", key), b"1", nx=True,
                                          px=max(1, int(ttl * 1000))))

    async def locked(self, key: str) -> bool:
        return bool(await self._redis.exists(self._k("lock", key)))

    async def unlock(self, key: str) -> None:
        await self._redis.delete(self._k("lock", key))
