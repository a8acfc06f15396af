"""The ``[cache]`` table: flat keys, so every one can be overridden as ``MIDWAY_CACHE__<KEY>``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

SHARE_SCOPES = ("principal", "team", "global")
SEMANTIC_MODES = ("serve", "shadow")


class ConfigError(ValueError):
    """A ``[cache]`` setting midway cannot use."""


@attrs.define
class CacheConfig:
    enabled: bool = True
    # "sqlite" (in the data dir), a .db path, "redis://..." or "postgresql://..." (or an
    # env:/file: reference holding one): midway.storage.parse_store
    store: str = "sqlite"
    ttl: float = 7 * 24 * 3600.0  # seconds an entry lives; 0: until evicted
    max_bytes: int = 1024 * 1024 * 1024  # LRU cap on stored answer bytes
    max_entries: int = 0  # LRU cap on the number of entries; 0: none
    # who may share an entry: the same principal (default), the same team, or everyone
    share: str = "principal"
    coalesce: bool = True  # identical concurrent misses wait for one upstream answer
    coalesce_timeout: float = 120.0
    key_prefix: str = "midway:cache:"  # Redis
    schema: str = "public"  # PostgreSQL
    table: str = "midway_cache"  # PostgreSQL
    # semantic layer (opt-in)
    semantic: bool = False
    semantic_mode: str = "serve"  # "shadow": record would-be hits, serve none
    semantic_threshold: float = 0.95
    # per-model thresholds, by glob: {"claude-haiku-*" = 0.97}
    semantic_thresholds: dict[str, float] = attrs.field(factory=dict)
    semantic_guard: bool = True  # numbers, negations, entities of both prompts must agree
    semantic_tool_use: bool = False  # serve answers that call tools semantically
    # "minilm" (local ONNX), "openai" (an OpenAI-compatible /v1/embeddings), or
    # "package.module:factory" for an embedder from another package
    embedder: str = "minilm"
    embedder_model_path: str | None = None  # minilm: an .onnx file instead of the package's
    embedder_url: str | None = None  # openai: base URL (…/v1 is appended when missing)
    embedder_model: str = "text-embedding-3-small"
    embedder_api_key: str | None = None  # a secret reference: "env:NAME", "file:/path", …
    embedder_max_chars: int = 8000  # openai: longest last turn embedded

    def threshold_for(self, model: str | None) -> float:
        import fnmatch

        if model:
            for glob, value in self.semantic_thresholds.items():
                if fnmatch.fnmatchcase(model, glob):
                    return float(value)
        return self.semantic_threshold


def load_config(table: Mapping[str, Any]) -> CacheConfig:
    """Build the config from a plugin table; unknown keys are an error (typos fail loudly)."""
    fields = {f.name: f for f in attrs.fields(CacheConfig)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"[cache] has no setting {key!r}")
        values[key] = value
    try:
        config = CacheConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"[cache]: {exc}") from None
    if config.share not in SHARE_SCOPES:
        raise ConfigError(f"[cache] share must be one of {', '.join(SHARE_SCOPES)}")
    if config.semantic_mode not in SEMANTIC_MODES:
        raise ConfigError(f"[cache] semantic_mode must be one of {', '.join(SEMANTIC_MODES)}")
    if not 0.0 < float(config.semantic_threshold) <= 1.0:
        raise ConfigError("[cache] semantic_threshold must be in (0, 1]")
    config.ttl = float(config.ttl)
    config.semantic_threshold = float(config.semantic_threshold)
    return config
