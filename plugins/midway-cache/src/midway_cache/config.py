"""The ``[cache]`` table (docs/cache.md), declared once: built by
``midway.options("cache", CacheConfig)`` at start-up and ``settings.options(...)`` in the
commands. Flat keys, so every one can be overridden as ``MIDWAY_CACHE__<KEY>``."""

from __future__ import annotations

import fnmatch
from typing import Literal

import attrs

from midway.config import ConfigError
from midway.options import byte_size, option, store_option
from midway.storage import StoreURL
from midway.timeparse import parse_duration
from midway_cache.rules import CacheRule, parse_rules


@attrs.frozen
class CacheConfig:
    """Everything the cache can be told; docs/cache.md explains each key."""

    enabled: bool = option(True, help="answer the requests that ask for the cache (the "
                           "x-midway-cache: use header, or a rule); false: none")
    rules: tuple[CacheRule, ...] = option(
        (), converter=parse_rules, help="requests cached without asking: tables of model, "
        "team, path globs and temperature, all of which must match, e.g. "
        "[{ temperature = 0 }]; empty: only requests sent with x-midway-cache: use")
    store: StoreURL = store_option(
        "cache.db", kinds=("sqlite", "postgresql", "redis"),
        help="\"sqlite\" (cache.db in the data dir), a .db path, redis://… or postgresql://… "
        "(env:NAME / file:PATH hold one)")
    ttl: float = option(7 * 24 * 3600.0, converter=parse_duration,
                        help="how long an entry lives (e.g. 7d); 0: until evicted")
    max_bytes: int = option(1024 ** 3, converter=byte_size,
                            help="LRU cap on stored answer bytes (e.g. 1GiB)")
    max_entries: int = option(0, ge=0, help="LRU cap on the number of entries; 0: none")
    share: Literal["principal", "team", "global"] = option(
        "principal", help="who may share an entry: the same principal, the same team, or "
        "everyone")
    coalesce: bool = option(True, help="identical concurrent misses wait for one upstream "
                            "answer")
    coalesce_timeout: float = option(120.0, converter=parse_duration,
                                     help="how long a coalesced miss waits, at most")
    key_prefix: str = option("midway:cache:", help="Redis key prefix")
    schema: str = option("public", help="PostgreSQL schema of the table")
    table: str = option("midway_cache", help="PostgreSQL table name")
    semantic: bool = option(False, help="also serve answers to similar prompts (opt-in)")
    semantic_mode: Literal["serve", "shadow"] = option(
        "serve", help="\"shadow\": record would-be semantic hits, serve none")
    semantic_threshold: float | None = option(
        None, help="cosine similarity at which a stored prompt is a candidate, in (0, 1]; "
        "default 0.70 with the verifier, 0.95 without")
    semantic_thresholds: dict[str, float] = option(
        {}, help="per-model thresholds by glob, e.g. { \"claude-haiku-*\" = 0.97 }")
    semantic_guard: bool = option(True, help="numbers, negations and entities of both "
                                  "prompts must agree")
    semantic_verifier: bool = option(True, help="judge the best candidate a second time: "
                                     "words one prompt has and the other lacks must be "
                                     "synonyms (docs/cache.md)")
    semantic_tool_use: bool = option(False, help="serve answers that call tools semantically")
    embedder: str = option("minilm", help="\"minilm\" (local ONNX), \"openai\" (an "
                           "OpenAI-compatible /v1/embeddings) or \"package.module:factory\"")
    embedder_model_path: str | None = option(
        None, help="minilm: an all-MiniLM-L6-v2 .onnx file instead of the package's")
    embedder_window: int = option(
        64, ge=8, help="minilm: WordPiece tokens embedded of a longer last turn (its first "
        "three quarters and last quarter), at most 256; the guard and verifier read it all")
    embedder_url: str | None = option(
        None, help="openai: base URL (…/v1 is appended when missing)")
    embedder_model: str = option("text-embedding-3-small", help="openai: the model")
    # Resolved when the openai embedder is built: a reference needed by nothing else.
    embedder_api_key: str | None = option(
        None, secret=True, help="openai: the API key, a secret reference (env:NAME, file:PATH)")
    embedder_max_chars: int = option(8000, help="openai: longest last turn embedded")

    def __attrs_post_init__(self) -> None:
        for name, value in [("semantic_threshold", self.semantic_threshold),
                            *((f"semantic_thresholds.{k}", v)
                              for k, v in self.semantic_thresholds.items())]:
            if value is not None and not 0.0 < float(value) <= 1.0:
                raise ConfigError(f"[cache] {name}: expected a number in (0, 1], got {value}")

        if self.embedder_window > 256:
            raise ConfigError("[cache] embedder_window: expected at most 256 (the model's "
                              f"limit), got {self.embedder_window}")

    @property
    def default_threshold(self) -> float:
        if self.semantic_threshold is not None:
            return self.semantic_threshold
        return 0.70 if self.semantic_verifier else 0.95

    def threshold_for(self, model: str | None) -> float:
        if model:
            for glob, value in self.semantic_thresholds.items():
                if fnmatch.fnmatchcase(model, glob):
                    return float(value)
        return self.default_threshold
