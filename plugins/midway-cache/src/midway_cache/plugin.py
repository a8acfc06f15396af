"""The cache of one running midway, behind its hooks: look up in ``pre_request``, rebuild
streams in ``on_chunk`` (observed only for streamed misses it may store), store complete answers
in ``post_response``.

Opt-in: only requests sent with ``x-midway-cache: use`` (or ``refresh``), or matched by a
``[cache] rules`` entry, are looked up and stored; every other request passes as if the plugin
were not installed. On those: ``x-midway-cache: bypass`` (neither read nor write the cache;
also ``cache-control: no-store``) and ``x-midway-cache: refresh`` (skip the lookup, store the
fresh answer; also ``cache-control: no-cache``). Response headers: ``x-midway-cache: hit | miss
| bypass | semantic-hit``, ``x-midway-cache-similarity`` on semantic hits; a hit also carries
``x-midway-cache-replay: true``, a synthetic ``request-id: req_midway_…`` and ``age``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import attrs
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from midway import Exchange, Midway, Response, SSEEvent
from midway.annotations import (
    CACHE,
    CACHE_BYPASS,
    CACHE_HIT,
    CACHE_MISS,
    CACHE_SEMANTIC_HIT,
    CACHE_SHADOW_HIT,
    CACHE_SIMILARITY,
    COST_USD,
)
from midway.assemble import MessageAssembler
from midway.background import start_every
from midway_cache import replay
from midway_cache.coalesce import Coalescer
from midway_cache.config import CacheConfig
from midway_cache.extras import require, semantic_modules
from midway_cache.keys import CacheKeys, request_keys
from midway_cache.rules import any_matches
from midway_cache.stores import Entry, Store, make_store

if TYPE_CHECKING:
    from midway_cache.embedders import Embedder
    from midway_cache.semantic import SemanticIndex

log = logging.getLogger("midway.cache")

HEADER = "x-midway-cache"
REPLAY_HEADER = "x-midway-cache-replay"
# the request header values that address the cache (a rule may opt in on the client's behalf);
# "bypass" is answered with x-midway-cache: bypass, so the client sees it was heard
_OPT_IN = ("use", "refresh", "bypass")
_FLUSH_EVERY = 1.0
_PURGE_EVERY = 60.0
_WARN_EVERY = 10.0  # seconds between log lines about an unreachable store


@attrs.define(eq=False)
class _State:
    """The cache's per-request state, in ``exchange.state["cache"]``."""

    keys: CacheKeys
    store: bool = False  # store the answer when it completes
    leader: bool = False  # holds the coalescing flight of keys.exact
    partition: str | None = None
    vector: Any = None
    assembler: MessageAssembler | None = None


class Cache:
    """The cache of one running midway, created in ``startup`` and published as
    ``midway.services["cache"]`` (the hooks in :mod:`midway_cache` find it there)."""

    def __init__(self, config: CacheConfig, registry: CollectorRegistry | None) -> None:
        self.config = config
        self.store: Store | None = None
        self.coalescer: Coalescer | None = None
        self.embedder: Embedder | None = None
        self.index: SemanticIndex | None = None
        self._touched: dict[str, float] = {}
        self._counters: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._metric: Counter | None = None
        self._similarity: Histogram | None = None
        self._warned_at = 0.0
        if registry is not None:
            self._metric = Counter("midway_cache_lookups", "Cache lookups by result",
                                   ["result"], registry=registry)
            self._similarity = Histogram(
                "midway_cache_similarity", "Best semantic similarity of semantic lookups",
                buckets=(0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99,
                         1.0),
                registry=registry)

    async def stats(self) -> dict[str, Any]:
        """entries, hits, misses, bytes, saved_tokens, saved_usd (+ semantic_hits,
        shadow_hits, bypasses, stores)."""
        await self.flush()
        return await self.require_store().stats()

    def require_store(self) -> Store:
        if self.store is None:
            raise RuntimeError("the cache is not started")
        return self.store

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, midway: Midway) -> None:
        """Open the store (and the embedder) and start the background jobs."""
        self.store = make_store(self.config)
        await self.store.open()
        self.coalescer = Coalescer(self.store, self.config.coalesce_timeout)
        if self.config.semantic:
            require("[cache] semantic = true", semantic_modules(self.config))
            from midway_cache.embedders import MiniLMEmbedder, make_embedder
            from midway_cache.semantic import SemanticIndex

            self.embedder = make_embedder(self.config, midway)
            if isinstance(self.embedder, MiniLMEmbedder):
                await self.embedder.warm()
            from midway_cache.verify import Verifier

            verifier = Verifier() if self.config.semantic_verifier else None
            self.index = SemanticIndex(self.store, guard=self.config.semantic_guard,
                                       verifier=verifier)
        self._tasks = [start_every(_FLUSH_EVERY, self.flush, log=log,
                                   name="cache: writing touches and counters"),
                       start_every(_PURGE_EVERY, self._purge, log=log,
                                   name="cache: purging expired entries")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.store is not None:
            try:
                await self.flush()
            except Exception:
                self._store_failed("write counters")
            await self.store.close()
            self.store = None
        if self.embedder is not None:
            await self.embedder.close()
            self.embedder = None

    async def flush(self) -> None:
        """Write batched LRU touches and counters to the store."""
        if self.store is None or not (self._touched or self._counters):
            return
        touched, counters = self._touched, self._counters
        self._touched, self._counters = {}, {}
        await self.store.record(touched, counters)

    async def _purge(self) -> None:
        if self.store is not None:
            await self.store.purge(time.time())

    def _count(self, result: str, **amounts: float) -> None:
        name = {"hit": "hits", "miss": "misses", "semantic-hit": "semantic_hits",
                "shadow-hit": "shadow_hits", "bypass": "bypasses", "store": "stores"}[result]
        self._counters[name] = self._counters.get(name, 0) + 1
        for key, value in amounts.items():
            self._counters[key] = self._counters.get(key, 0) + value
        if self._metric is not None:
            self._metric.labels(result).inc()

    # -- lookup ------------------------------------------------------------------------------

    async def pre_request(self, exchange: Exchange) -> Response | None:
        if self.store is None:
            return None
        try:
            return await self._lookup(exchange)
        except Exception:
            # The store is down (e.g. Redis restarting): the request goes upstream uncached
            # rather than failing; nothing is stored for it.
            self._store_failed("look up")
            state = exchange.state.pop("cache", None)
            if isinstance(state, _State):
                await self._release(state)
            self._annotate(exchange, CACHE_BYPASS)
            return None

    def _store_failed(self, doing: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning("cache: could not %s in the store; bypassing the cache", doing,
                        exc_info=True)

    async def _lookup(self, exchange: Exchange) -> Response | None:
        assert self.store is not None
        headers = exchange.request.headers
        directive = headers.popall(HEADER, [""])[-1].strip().lower()
        # Opt-in: a request the client did not ask the cache for, and no rule names, is not
        # touched at all (not even parsed), so an installed cache changes no answer.
        if directive not in _OPT_IN and not (self.config.rules and
                                              any_matches(self.config.rules, exchange)):
            return None
        control = headers.get("cache-control", "").lower()
        keys = request_keys(exchange.request, exchange.principal, self.config.share)
        if keys is None:
            return None
        if directive == "bypass" or "no-store" in control:
            self._annotate(exchange, CACHE_BYPASS)
            return None
        state = _State(keys=keys, store=True)
        exchange.state["cache"] = state
        if directive == "refresh" or "no-cache" in control:
            self._annotate(exchange, CACHE_MISS)
            self._observe(exchange)
            return None
        now = time.time()
        entry = await self.store.get(keys.exact, now)
        if entry is not None:
            return self._hit(exchange, entry, CACHE_HIT)
        if self.coalescer is not None and self.config.coalesce:
            state.leader = await self.coalescer.join(keys.exact)
            # Looked up again even by a new leader: the previous one may have stored the
            # answer and let go between our first lookup and the join.
            entry = await self.store.get(keys.exact, time.time())
            if entry is not None:
                await self._release(state)
                state.store = False
                return self._hit(exchange, entry, CACHE_HIT)
        answer = await self._semantic(exchange, state, now)
        if answer is not None:
            await self._release(state)
            state.store = False
            return answer
        if exchange.annotations.get(CACHE) != CACHE_SHADOW_HIT:
            self._annotate(exchange, CACHE_MISS)
        self._observe(exchange)
        return None

    def _observe(self, exchange: Exchange) -> None:
        """A miss goes upstream and its answer may be stored: a stream is rebuilt from its
        events (on_chunk); every other stream is relayed without them."""
        if exchange.stream_requested:
            # the registered plugin is the package of hook functions that delegate here
            exchange.observe_stream(sys.modules[__package__ or "midway_cache"])

    async def _semantic(self, exchange: Exchange, state: _State, now: float
                        ) -> Response | None:
        keys = state.keys
        if self.embedder is None or self.index is None or keys.partition is None or \
                keys.prompt is None:
            return None
        vector = await self.embedder.embed(keys.prompt)
        if vector is None:
            return None  # longer than the embedder handles: exact layer only
        state.partition = f"{self.embedder.name}:{keys.partition}"
        state.vector = vector
        config = self.config
        match = await self.index.best(state.partition, vector, keys.prompt,
                                      config.threshold_for(exchange.model),
                                      config.semantic_tool_use, now)
        if match is None:
            return None
        if self._similarity is not None:
            self._similarity.observe(match.similarity)
        exchange.annotations[CACHE_SIMILARITY] = round(match.similarity, 4)
        if config.semantic_mode == "shadow":
            log.info("cache shadow hit %s: similarity %.4f", exchange.id, match.similarity)
            self._annotate(exchange, CACHE_SHADOW_HIT, header=CACHE_MISS)
            self._count(CACHE_MISS)  # it went upstream all the same
            return None
        entry = await self.require_store().get(match.key, time.time())
        if entry is None:
            return None
        return self._hit(exchange, entry, CACHE_SEMANTIC_HIT, match.similarity)

    def _annotate(self, exchange: Exchange, result: str, header: str | None = None) -> None:
        exchange.annotations[CACHE] = result
        exchange.extra_response_headers[HEADER] = header or result
        self._count(result)

    def _hit(self, exchange: Exchange, entry: Entry, result: str,
             similarity: float | None = None) -> Response:
        now = time.time()
        exchange.annotations[CACHE] = result
        # A replay has no upstream request id: a synthetic one, never an old answer's.
        headers = {HEADER: result, REPLAY_HEADER: "true",
                   "request-id": f"req_midway_{replay.token()}",
                   "age": str(max(0, int(now - entry.created_at)))}
        if similarity is not None:
            headers["x-midway-cache-similarity"] = f"{similarity:.4f}"
            exchange.annotations[CACHE_SIMILARITY] = round(similarity, 4)
        self._touched[entry.key] = now
        self._count(result, saved_tokens=entry.tokens, saved_usd=_usd(entry.cost_usd))
        if exchange.stream_requested:
            return Response(status=200, stream=[replay.as_sse(entry.message)], headers=headers,
                            content_type="text/event-stream; charset=utf-8")
        return Response(status=200, body=replay.as_json(entry.message), headers=headers,
                        content_type="application/json")

    # -- storing -----------------------------------------------------------------------------

    def on_chunk(self, exchange: Exchange, event: SSEEvent) -> None:
        state = exchange.state.get("cache")
        if state is None or not state.store or exchange.answered_by is not None:
            return
        if state.assembler is None:
            state.assembler = MessageAssembler()
        state.assembler.feed_event(event)

    async def post_response(self, exchange: Exchange) -> None:
        state = exchange.state.get("cache")
        if state is None:
            return
        try:
            message = self._complete_message(exchange, state)
            if message is not None and self.store is not None:
                await self._store(exchange, state, message)
        except Exception:
            self._store_failed("store an answer")
        finally:
            await self._release(state)

    def _complete_message(self, exchange: Exchange, state: _State) -> dict[str, Any] | None:
        """The answer, if it is complete and successful; ``None`` for anything else."""
        if not state.store or exchange.answered_by is not None or exchange.status != 200 or \
                exchange.client_disconnected or exchange.error is not None or \
                not exchange.complete:
            return None
        if exchange.streaming:
            # the cache never keeps an answer it could not rebuild exactly
            if state.assembler is None or not state.assembler.exact:
                return None
            message = state.assembler.message()
        else:
            try:
                message = orjson.loads(exchange.response_body or b"")
            except orjson.JSONDecodeError:
                return None
        if not isinstance(message, dict) or message.get("type") != "message" or \
                message.get("stop_reason") in (None, "pause_turn"):
            return None
        return message

    async def _store(self, exchange: Exchange, state: _State, message: dict[str, Any]) -> None:
        now = time.time()
        keys = state.keys
        cost = exchange.annotations.get(COST_USD)
        entry = Entry(key=keys.exact, tenant=keys.tenant, message=message, created_at=now,
                      expires_at=now + self.config.ttl if self.config.ttl > 0 else None,
                      partition=state.partition if state.vector is not None else None,
                      prompt=keys.prompt if state.vector is not None else None,
                      vector=state.vector.tobytes() if state.vector is not None else None,
                      cost_usd=str(cost) if cost is not None else None)
        await self.require_store().put(entry)
        self._count("store")
        if self.index is not None and state.partition is not None and keys.prompt is not None:
            self.index.added(state.partition, entry.key, keys.prompt, entry.tool_use,
                             state.vector)

    async def _release(self, state: _State) -> None:
        if state.leader and self.coalescer is not None:
            state.leader = False
            try:  # in-process followers are let go even when the store is unreachable
                await self.coalescer.release(state.keys.exact)
            except Exception:
                self._store_failed("release a fill lock")


def _usd(value: str | None) -> float:
    if value is None:
        return 0.0
    try:
        return float(Decimal(value))
    except (InvalidOperation, ValueError):
        return 0.0

